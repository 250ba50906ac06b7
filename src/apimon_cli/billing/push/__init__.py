"""``apimon billing push``: the ledger's billable usage -> Stripe meters, Lago, OpenMeter, exactly once.

``engine`` plans and records (the sync table in the ledger, write-ahead); ``vendors`` holds one client per
billing platform. SDKs are imported only when a client is built.
"""

from .engine import Op, PushAborted, PushPlan, VendorReport, plan_push, run_push, sink_id

__all__ = ["Op", "PushAborted", "PushPlan", "VendorReport", "plan_push", "run_push", "sink_id"]
