"""Attack-risk and representation checks. Each returns a :class:`guards.checks.base.CheckResult`."""
