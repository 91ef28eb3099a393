"""The planner's handlers, one module per thing it consumes (as in every service: `handlers`
are consumers, `events` what a service publishes, `client` what other services import).

    intake.py      tm.cmd.planner.any.>   policy.set, backup.request, restore.request, cancel
    job_events.py  TM_EVT                  job.*, backup.*, restore.completed, backup.verified
    queries.py     tm.qry.planner.policy   the policy of a database (request/reply)
"""
