"""VerMAS inspector: verification of a bead's work as a pipeline of roles.

Designer (bead -> Specification), Strategist (Specification -> shell tests), Verifier (runs
the tests; not a model), Auditor (judges evidence exit codes cannot decide), and the panel
(Advocate, Critic, Judge) for contested criteria. Every model call is `claude -p` with
structured output (backend.py); the routing between stages is policy.py.

The refinery's merge queue calls `vermas.inspector.pipeline.verify_for_merge(town, bead_id,
worktree)`. This package's __init__ imports nothing: beads reads `inspector.records`, and the
pipeline imports beads, so a re-export of the pipeline here would be an import cycle.
"""
