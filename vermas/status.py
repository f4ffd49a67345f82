"""Town status: one read of the store summarising work, hooks, mail and convoys."""

from __future__ import annotations

from pydantic import BaseModel

from vermas import convoy
from vermas.town import Town


class HookedAgent(BaseModel):
    agent: str
    bead_id: str
    title: str


class TownStatus(BaseModel):
    town: str
    beads_by_status: dict[str, int]
    hooked: list[HookedAgent]
    unread_mail: dict[str, int]
    convoys: list[convoy.ConvoyStatus]
    rigs: list[str]


def town_status(town: Town) -> TownStatus:
    with town.db.read() as conn:
        by_status = {r[0]: r[1] for r in conn.execute(
            "SELECT status, COUNT(*) FROM issues GROUP BY status ORDER BY status")}
        hooked = [HookedAgent(agent=r[0], bead_id=r[1], title=r[2]) for r in conn.execute(
            "SELECT assignee, id, title FROM issues WHERE status = 'hooked' AND assignee IS NOT NULL "
            "ORDER BY assignee")]
        unread = {r[0]: r[1] for r in conn.execute(
            "SELECT recipient, COUNT(*) FROM messages WHERE read_at IS NULL GROUP BY recipient "
            "ORDER BY recipient")}
    return TownStatus(
        town=town.config.name, beads_by_status=by_status, hooked=hooked, unread_mail=unread,
        convoys=convoy.list_convoys(town), rigs=sorted(town.config.rigs),
    )
