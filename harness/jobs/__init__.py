"""Floor 6: the built-in job types (experiments), each an ordinary plugin.

Every module here that defines a job type registers it through the ``bsight_job_types`` hook and an entry point
in ``pyproject.toml``, as a third party's job type would; the contract is :mod:`bsight.harness.jobtypes`.
Modules without a hook (``answers_common``, ``published``, ``counting``) are the library the job types share; a job
module never imports another job module: what one job needs from another is a declared artifact
(:meth:`~bsight.harness.jobtypes.JobType.produces` / ``consumes``) or a named table (``tables``).
"""
