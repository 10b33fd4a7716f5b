"""Small helpers shared by the tests (importable as ``helpers`` or through ``conftest``)."""

from __future__ import annotations

from typing import Any, Optional

#: A round epoch time to start event streams at (2023-11-14T22:13:20Z).
T0 = 1_700_000_000.0


def ev(
    user: str,
    type: str,  # noqa: A002  (the event field's own name)
    ts: Optional[float] = None,
    step: Optional[str] = None,
    target: Optional[str] = None,
    **props: Any,
) -> dict[str, Any]:
    """An event mapping: ``ev("u1", "click", T0 + 1, "billing", "#pay", status=503)``.

    ``ts``, ``step`` and ``target`` are left out when None; extra keyword arguments become
    ``properties`` (e.g. ``status=``, ``results=``), except ``account_id=`` which is a field.
    """
    event: dict[str, Any] = {"user_id": user, "type": type}
    if ts is not None:
        event["ts"] = ts
    if step is not None:
        event["step"] = step
    if target is not None:
        event["target"] = target
    if "account_id" in props:
        event["account_id"] = props.pop("account_id")
    if props:
        event["properties"] = props
    return event
