"""Role profiles: which tools each role sees. Every tool schema costs context tokens in
every session, so each role gets only what its job needs."""

from vermas.addresses import Role

ALL_TOOLS = (
    "bead_create", "bead_show", "bead_list", "bead_ready", "bead_update", "bead_close",
    "bead_dep_add", "hook_check", "sling", "unsling", "mail_send", "mail_inbox", "mail_read",
    "mail_ack", "nudge", "polecat_done", "convoy_create", "convoy_status", "convoy_list", "rig_sync",
    "mq_list", "mq_show", "mq_retry", "mq_reject", "mq_resume", "town_status",
    "verify_spec", "verify_plan", "verify_run", "verify_bead", "verify_report",
    "formula_list", "formula_show", "mol_pour", "mol_status", "mol_step_done", "mol_squash", "mol_burn",
)
VERIFY = ("verify_spec", "verify_plan", "verify_run", "verify_bead", "verify_report")
MAIL = ("mail_send", "mail_inbox", "mail_read", "mail_ack")
MQ = ("mq_list", "mq_show", "mq_retry", "mq_reject", "mq_resume")
COORDINATOR = tuple(t for t in ALL_TOOLS if t != "polecat_done")

PROFILES: dict[str, tuple[str, ...]] = {
    "polecat": ("hook_check", "bead_show", "bead_create", "bead_update", *MAIL, "polecat_done",
                "mol_status", "mol_step_done"),
    "witness": ("hook_check", "bead_show", "bead_list", "bead_ready", "bead_update", "sling",
                "unsling", *MAIL, "nudge", "town_status"),
    "refinery": ("hook_check", "bead_show", "bead_list", "bead_update", "bead_close", *MAIL, *MQ,
                 "town_status", *VERIFY),
    "crew": COORDINATOR,
    "mayor": COORDINATOR,
    "deacon": COORDINATOR,
    "overseer": ALL_TOOLS,
    "all": ALL_TOOLS,
}


def default_profile(role: Role) -> str:
    return role.value
