"""Accuracy of the committed snapshots through every provider: a kernel that is fast but answers
differently shows here as a step in a provider's line."""

from mfbench.shells.suite import ACCURACY_PARAMS, SnapshotCase, evaluate_all


class SnapshotAccuracy:
    params = ACCURACY_PARAMS
    param_names = ["device", "provider", "task"]
    timeout = 900

    def setup_cache(self):
        return evaluate_all(self.params)

    def setup(self, measured, device, provider, task):
        self.case = SnapshotCase(device, provider, task, measured=measured)

    # Each as its complement, which is better lower: asv's regression feed only looks for increases.
    def track_error_rate(self, *params):  # 1 - accuracy
        return 1.0 - self.case.metric("accuracy")

    track_error_rate.unit = "fraction"

    def track_bucket_disagreement(self, *params):  # 1 - share of hash buckets identical to reference's
        return 1.0 - self.case.metric("bucket_agreement")

    track_bucket_disagreement.unit = "fraction"
