"""Accuracy at equal time: MemoryFormer and the dense baseline each trained for the same seconds
(``MFBENCH_ASV_BUDGET_SECONDS``) on the snapshot tasks. A change that makes MemoryFormer train slower
shows as a step up in its error rate and its seconds per step at equal time."""

from mfbench.shells.suite import BUDGET_PARAMS, BudgetCase, train_budgets


class BudgetAccuracy:
    params = BUDGET_PARAMS
    param_names = ["device", "architecture", "task"]
    timeout = 1800

    def setup_cache(self):
        return train_budgets(self.params)

    def setup(self, measured, device, architecture, task):
        self.case = BudgetCase(device, architecture, task, measured=measured)

    # Each better lower: asv's regression feed only looks for increases.
    def track_error_rate_at_equal_time(self, *params):  # 1 - accuracy at the end of the budget
        return 1.0 - self.case.metric("accuracy")

    track_error_rate_at_equal_time.unit = "fraction"

    def track_seconds_per_step(self, *params):  # the budget's seconds over the steps it bought
        return self.case.metric("seconds_spent") / self.case.metric("steps")

    track_seconds_per_step.unit = "s"
