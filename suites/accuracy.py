"""Accuracy of the committed snapshots through every provider: a kernel that is fast but answers
differently shows here as a step in a provider's line."""

from mfbench.suite import ACCURACY_PARAMS, SnapshotCase, evaluate_all


class SnapshotAccuracy:
    params = ACCURACY_PARAMS
    param_names = ["device", "provider", "task"]
    timeout = 900

    def setup_cache(self):
        return evaluate_all(self.params)

    def setup(self, measured, device, provider, task):
        self.case = SnapshotCase(device, provider, task, measured=measured)

    def track_accuracy(self, *params):
        return self.case.metric("accuracy")

    track_accuracy.unit = "fraction"

    def track_bucket_agreement(self, *params):
        return self.case.metric("bucket_agreement")

    track_bucket_agreement.unit = "fraction"
