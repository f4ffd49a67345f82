"""The verification pipeline: Designer -> Strategist -> Verifier -> (Auditor -> panel), with
the policy of policy.py deciding, per criterion, where evidence goes next.

Entry points:
- `Inspector` (async): spec / plan / run / verify / report, used by the MCP tools;
- `verify_for_merge(town, bead_id, worktree)` (blocking): what the refinery's merge queue calls
  before merging; returns the VerificationReport (merge only if `overall == "PASS"`) and raises
  a VermasError when it cannot verify at all (no spec could be made, bad work tree, ...).

Cost discipline: a stored, still-current Specification and plan are reused; decided criteria
are cached by (bead, commit, criterion, fingerprint of criterion and tests, level), so verifying
an unchanged commit again runs no test and calls no model.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from vermas import beads, cost, git, ids, permissions, timeutil, validate
from vermas.addresses import parse_address
from vermas.errors import InvalidInput, NotFound, VermasError
from vermas.inspector import auditor, designer, panel, policy, records, strategist
from vermas.inspector.backend import (
    ClaudeCLI,
    ClaudeSettings,
    ModelBackend,
    ModelError,
    RoleCall,
)
from vermas.inspector.models import (
    LEVELS,
    AcceptanceCriterion,
    Argument,
    AuditResult,
    CriterionOutcome,
    Level,
    ModelCall,
    Specification,
    TestPlan,
    TestResult,
    TestRun,
    VerificationReport,
)
from vermas.inspector.prompts import role_template
from vermas.inspector.records import PlanRecord, SpecRecord
from vermas.inspector.verifier import run_tests, town_private_paths
from vermas.permissions import Action
from vermas.town import InspectorConfig, RigConfig, Town

ProgressSink = Callable[[float, float | None, str], Awaitable[None]]
BackendFactory = Callable[["InspectorSettings"], ModelBackend]
MODEL_PARALLELISM = 4
MAX_PARALLELISM = 64
SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.I)
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InspectorSettings:
    claude: ClaudeSettings
    level: Level
    parallelism: int
    min_confidence: float
    test_command: str
    rig: str | None
    pass_env: tuple[str, ...] = ()
    test_network: bool = False  # the rig's `test_network`: tests keep the host's network


def rig_for_bead(town: Town, bead_id: str) -> RigConfig | None:
    prefix = ids.prefix_of(bead_id).removesuffix("-wisp")  # a wisp's ids are <prefix>-wisp-<hash>
    return next((r for r in town.config.rigs.values() if r.prefix == prefix), None)


def check_level(level: object) -> Level:
    if level not in LEVELS:
        raise InvalidInput(f"invalid level {str(level)[:20]!r}; allowed: {', '.join(LEVELS)}")
    return level  # type: ignore[return-value]


def settings_for(town: Town, bead_id: str, level: str | None = None) -> InspectorSettings:
    """Town `[inspector]` defaults, overridden by the bead's rig (`inspector = {...}`, verify_level)."""
    return settings_for_rig(town, rig_for_bead(town, bead_id), level)


def settings_for_rig(town: Town, rig: RigConfig | None, level: str | None = None) -> InspectorSettings:
    """Town `[inspector]` defaults, overridden by the rig's (None: the town's alone); InvalidInput
    naming the town.toml table when they are not valid."""
    merged: dict[str, Any] = town.config.inspector.model_dump()
    where = "[inspector]"
    if rig is not None:
        where = f"[rigs.{rig.name}] inspector"
        if "level" in rig.inspector:
            raise InvalidInput(f"town.toml {where}: set the rig's level with verify_level, not inspector.level")
        merged.update(rig.inspector)
        merged["level"] = rig.verify_level
    try:
        cfg = InspectorConfig(**merged)
    except ValidationError as exc:
        raise InvalidInput(f"invalid inspector settings in town.toml {where}: {exc.errors()[0]['msg']} "
                           f"at {'.'.join(map(str, exc.errors()[0]['loc']))}") from None
    chosen = check_level(level if level is not None else cfg.level)
    problems = []
    if not 1 <= cfg.parallelism <= MAX_PARALLELISM:
        problems.append(f"parallelism {cfg.parallelism} (allowed 1..{MAX_PARALLELISM})")
    if cfg.budget_usd <= 0:
        problems.append(f"budget_usd {cfg.budget_usd} (must be > 0)")
    if cfg.timeout <= 0:
        problems.append(f"timeout {cfg.timeout} (seconds, must be > 0)")
    if not 0 <= cfg.min_confidence <= 1:
        problems.append(f"min_confidence {cfg.min_confidence} (allowed 0..1)")
    if not cfg.command.strip():
        problems.append("command is empty")
    secret = [n for n in cfg.pass_env if SECRET_NAME_RE.search(n) or not ENV_NAME_RE.fullmatch(n)]
    if secret:
        problems.append(f"pass_env {', '.join(secret)} (tests may not see secrets: names with KEY, TOKEN, "
                        "SECRET, PASSWORD, CREDENTIAL or AUTH are refused; names are [A-Za-z_][A-Za-z0-9_]*)")
    if problems:
        raise InvalidInput(f"invalid inspector settings in town.toml {where}: " + "; ".join(problems))
    return InspectorSettings(
        claude=ClaudeSettings(command=cfg.command, args=tuple(cfg.args), model=cfg.model,
                              budget_usd=cfg.budget_usd, timeout_s=float(cfg.timeout),
                              env=tuple(sorted(cfg.env.items()))),
        level=chosen, parallelism=cfg.parallelism, min_confidence=cfg.min_confidence,
        test_command=rig.test_command if rig else "", rig=rig.name if rig else None,
        pass_env=tuple(cfg.pass_env), test_network=rig.test_network if rig else False,
    )


def rig_pass_env(town: Town, rig_name: str) -> tuple[str, ...]:
    """The rig's `pass_env` (the town's `[inspector]` list unless the rig's `inspector` table
    sets its own), checked as settings_for checks it: the variables the refinery's merge test
    runs keep, so a rig whose tests need one is not judged red for lacking it."""
    rig = town.config.rigs.get(rig_name)
    names: object = town.config.inspector.pass_env
    if rig is not None and "pass_env" in rig.inspector:
        names = rig.inspector["pass_env"]
    where = f"[rigs.{rig_name}] inspector" if rig is not None and "pass_env" in rig.inspector else "[inspector]"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput(f"invalid pass_env in town.toml {where}: a list of variable names is allowed")
    bad = [n for n in names if SECRET_NAME_RE.search(n) or not ENV_NAME_RE.fullmatch(n)]
    if bad:
        raise InvalidInput(f"invalid pass_env in town.toml {where}: {', '.join(bad)[:200]} (tests may not see "
                           "secrets: names with KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL or AUTH are refused; "
                           "names are [A-Za-z_][A-Za-z0-9_]*)")
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# Work trees
# ---------------------------------------------------------------------------------------------


def resolve_worktree(town: Town, bead_id: str, worktree: str | None) -> Path:
    """The candidate to verify: the given path, else the polecat work tree of the bead's latest
    merge request."""
    if worktree is not None:
        if not isinstance(worktree, str) or not worktree.strip() or "\x00" in worktree:
            raise InvalidInput("worktree must be the path of a git work tree (the candidate's checkout)")
        path = Path(worktree).expanduser().resolve()
        check_town_worktree(town, path)
        if not git.is_worktree(path):
            raise InvalidInput(f"worktree {str(path)[:300]!r} is not a git work tree; pass the candidate's checkout")
        top = Path(git.run(path, "rev-parse", "--show-toplevel")).resolve()
        check_town_worktree(town, top)
        return top
    with town.db.read() as conn:
        row = conn.execute(
            "SELECT id, polecat FROM merge_requests WHERE bead_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (bead_id,),
        ).fetchone()
    if row is None:
        raise InvalidInput(f"{bead_id} has no merge request, so no candidate work tree is known; "
                           "pass worktree=PATH (a git checkout of the work to verify)")
    address = parse_address(row["polecat"])
    path = town.layout.polecat_worktree(str(address.rig), str(address.name))
    if not git.is_worktree(path):
        raise NotFound(f"the work tree of merge request {row['id']} ({address}) at {path} is gone; "
                       "pass worktree=PATH")
    return path


TOWN_WORKTREE_KINDS = "<rig>/polecats/<name>, <rig>/refinery/rig or <rig>/crew/<name>"


def check_town_worktree(town: Town, path: Path) -> None:
    """Refuse a work tree outside the town: the Verifier runs a model's shell commands in it, so a
    caller (MCP or shell) must not point it at any other repository. Checks the resolved path.
    The canonical clone (<rig>/mayor/rig) is not allowed: it holds the git directory of every work
    tree of its rig."""
    real = path.resolve()
    root = town.root.resolve()
    for name in town.config.rigs:
        if real == root / name / "refinery" / "rig" or real.parent in (root / name / "polecats",
                                                                         root / name / "crew"):
            return
    rigs = ", ".join(sorted(town.config.rigs)) or "none yet"
    raise InvalidInput(f"worktree {str(real)[:300]!r} is not one of this town's work trees; allowed: "
                       f"{town.root.resolve()}/{TOWN_WORKTREE_KINDS} (rigs: {rigs})")


def worktree_state(path: Path) -> tuple[str, bool]:
    """(HEAD commit, dirty). Dirty = tracked files changed; such a state is never cached.

    Untracked files do not count, as for polecat_done: test runs leave caches and build output
    behind, which must not make every re-run look like a new candidate.
    """
    _, commit = git.head(path)
    return commit, bool(git.dirty_files(path))


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class Progress:
    """Counts steps (tests run, model calls) and tells the sink; the total grows as work appears."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink
        self.done = 0
        self.total = 0

    def expect(self, steps: int) -> None:
        self.total += steps

    async def step(self, message: str) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        if self.sink is not None:
            await self.sink(float(self.done), float(self.total), message)

    async def note(self, message: str) -> None:
        if self.sink is not None:
            await self.sink(float(self.done), float(self.total) if self.total else None, message)


# ---------------------------------------------------------------------------------------------
# The inspector
# ---------------------------------------------------------------------------------------------


def cost_of(call: ModelCall) -> cost.ModelCallCost:
    """A model call as the town's cost ledger records it."""
    return cost.ModelCallCost(role=call.role, model=call.model, cost_usd=call.cost_usd, tokens=cost.Tokens(
        input_tokens=call.input_tokens, output_tokens=call.output_tokens, cache_read_tokens=call.cache_read_tokens,
        cache_creation_tokens=call.cache_creation_tokens))


def default_backend(settings: InspectorSettings, env: Mapping[str, str] | None = None) -> ModelBackend:
    return ClaudeCLI(settings.claude, env=env)


class Inspector:
    """The pipeline for one actor in one town. Stateless between calls: all state is in the store."""

    def __init__(
        self, town: Town, actor: str, *, progress: ProgressSink | None = None,
        backend_factory: BackendFactory | None = None, env: Mapping[str, str] | None = None,
    ) -> None:
        self.town = town
        self.actor = actor
        self.progress = Progress(progress)
        self.env = env
        self._backend_factory = backend_factory or (lambda s: default_backend(s, env))

    # -- helpers ---------------------------------------------------------------------------------

    def _may_verify(self) -> None:
        """Polecats never run the inspector: the rule lives in vermas.permissions, so the MCP
        tools and the shell (`vermas-runner verify --actor ...`) obey it alike."""
        permissions.require(parse_address(self.actor), Action.VERIFY)

    def _template(self, role: str) -> str:
        return role_template(role, self.town.root)

    async def _ask(self, backend: ModelBackend, call: RoleCall[Any], calls: list[ModelCall], bead_id: str) -> Any:
        """Ask a role; every call it made (also failed ones) lands in `calls`, and in the town's
        cost ledger (vermas.cost) for this actor and bead."""
        made: list[ModelCall] = []
        try:
            answer, made = await backend.ask(call)
        except ModelError as exc:
            made = list(exc.calls)
            raise
        finally:
            calls.extend(made)
            cost.record_model_calls(self.town, self.actor, bead_id, [cost_of(c) for c in made])
        return answer

    def _bead_row(self, bead_id: str) -> sqlite3.Row:
        validate.bead_id(bead_id)
        with self.town.db.read() as conn:
            return beads.fetch_row(conn, bead_id)

    # -- Designer --------------------------------------------------------------------------------

    async def spec(self, bead_id: str, refresh: bool = False, *, _calls: list[ModelCall] | None = None,
                   _settings: InspectorSettings | None = None) -> SpecRecord:
        """The bead's Specification: the stored one while current, else a new one from the Designer."""
        self._may_verify()
        validate.bead_id(bead_id)
        settings = _settings or settings_for(self.town, bead_id)
        with self.town.db.read() as conn:
            bead = beads.fetch_row(conn, bead_id)
            row = records.load_spec_row(conn, bead_id)
            source_ac = records.source_acceptance_criteria(conn, bead)
        if row is not None and not refresh and records.spec_is_current(row, bead):
            return records.spec_record(row, reused=True, calls=[])
        await self.progress.note(f"designer: specifying {bead_id}")
        calls: list[ModelCall] = []
        try:
            spec = await self._ask(self._backend_factory(settings),
                                   designer.call(dict(bead), source_ac, self._template("designer")), calls, bead_id)
        finally:
            if _calls is not None:
                _calls.extend(calls)
        await self.progress.step(f"designer: {len(spec.acceptance_criteria)} acceptance criteria")
        records.ensure_schema(self.town.db)
        with self.town.db.write() as conn:
            beads.fetch_row(conn, bead_id)
            records.store_spec(conn, self.town.db, bead, spec, calls, self.actor)
            stored = records.load_spec_row(conn, bead_id)
        assert stored is not None
        return records.spec_record(stored, reused=False, calls=calls)

    def _current_spec(self, bead_id: str) -> Specification:
        with self.town.db.read() as conn:
            bead = beads.fetch_row(conn, bead_id)
            row = records.load_spec_row(conn, bead_id)
        if row is None:
            raise NotFound(f"{bead_id} has no specification yet; run verify_spec first "
                           "(or verify_bead for the whole pipeline)")
        if not records.spec_is_current(row, bead):
            raise InvalidInput(f"{bead_id} changed since its specification was made; run verify_spec "
                               "again (or verify_bead, which re-specifies by itself)")
        return Specification.model_validate_json(row["spec_json"])

    # -- Strategist ------------------------------------------------------------------------------

    async def plan(self, bead_id: str, refresh: bool = False, worktree: str | None = None, *,
                   _spec: Specification | None = None, _calls: list[ModelCall] | None = None,
                   _settings: InspectorSettings | None = None, _path: Path | None = None) -> PlanRecord:
        """Tests for the bead's current Specification: stored ones while they match it, else new."""
        self._may_verify()
        validate.bead_id(bead_id)
        settings = _settings or settings_for(self.town, bead_id)
        spec = _spec or self._current_spec(bead_id)
        with self.town.db.read() as conn:
            row = records.load_plan_row(conn, bead_id)
        if row is not None and not refresh and row["spec_hash"] == records.spec_hash(spec):
            return records.plan_record(row, reused=True, calls=[])
        path = _path
        if path is None:
            path = self._optional_worktree(bead_id, worktree)
        await self.progress.note(f"strategist: planning tests for {bead_id}")
        calls: list[ModelCall] = []
        try:
            plan: TestPlan = await self._ask(
                self._backend_factory(settings),
                strategist.call(spec, self._template("strategist"), path, settings.test_command), calls, bead_id)
        finally:
            if _calls is not None:
                _calls.extend(calls)
        await self.progress.step(f"strategist: {len(plan.tests)} tests")
        records.ensure_schema(self.town.db)
        with self.town.db.write() as conn:
            records.store_plan(conn, bead_id, spec, plan, calls, self.actor)
            stored = records.load_plan_row(conn, bead_id)
        assert stored is not None
        return records.plan_record(stored, reused=False, calls=calls)

    def _optional_worktree(self, bead_id: str, worktree: str | None) -> Path | None:
        """For planning, a work tree helps (real paths) but is not required."""
        if worktree is not None:
            return resolve_worktree(self.town, bead_id, worktree)
        try:
            return resolve_worktree(self.town, bead_id, None)
        except VermasError:
            return None

    def _current_plan(self, bead_id: str) -> tuple[Specification, TestPlan]:
        spec = self._current_spec(bead_id)
        with self.town.db.read() as conn:
            row = records.load_plan_row(conn, bead_id)
        if row is None or row["spec_hash"] != records.spec_hash(spec):
            raise NotFound(f"{bead_id} has no test plan for its current specification; run verify_plan "
                           "first (or verify_bead for the whole pipeline)")
        return spec, TestPlan.model_validate_json(row["plan_json"])

    # -- Verifier --------------------------------------------------------------------------------

    async def run(self, bead_id: str, worktree: str | None = None) -> TestRun:
        """Run the stored plan's tests now (no model, no cache): the Verifier alone."""
        self._may_verify()
        validate.bead_id(bead_id)
        self._bead_row(bead_id)
        settings = settings_for(self.town, bead_id)
        _, plan = self._current_plan(bead_id)
        path = resolve_worktree(self.town, bead_id, worktree)
        commit, dirty = worktree_state(path)
        start = time.monotonic()
        results = await self._run_tests(plan.tests, path, settings)
        passed = sum(1 for r in results if r.passed)
        return TestRun(bead_id=bead_id, worktree=str(path), commit=commit, dirty=dirty, passed=passed,
                       failed=len(results) - passed, duration_s=round(time.monotonic() - start, 3),
                       results=results)

    async def _run_tests(self, tests: list[Any], path: Path, settings: InspectorSettings) -> list[TestResult]:
        self.progress.expect(len(tests))

        async def tick(result: TestResult) -> None:
            state = "PASS" if result.passed else f"FAIL ({result.evidence.failure})"
            await self.progress.step(f"verifier: {result.criterion_id} {state} in {result.evidence.duration_s:.1f}s")

        return await run_tests(tests, path, parallelism=settings.parallelism, on_result=tick,
                               keep_env=settings.pass_env, hidden=town_private_paths(self.town.root),
                               network=settings.test_network)

    # -- whole pipeline --------------------------------------------------------------------------

    async def verify(self, bead_id: str, worktree: str | None = None, level: str | None = None) -> VerificationReport:
        """Verify the candidate's HEAD: spec and plan (reused while current), the tests of every
        criterion not already decided for this commit, then the Auditor and panel where the policy
        sends a criterion. The report is stored; decided criteria are cached (clean trees only)."""
        self._may_verify()
        validate.bead_id(bead_id)
        self._bead_row(bead_id)
        settings = settings_for(self.town, bead_id, level)
        path = resolve_worktree(self.town, bead_id, worktree)
        commit, dirty = worktree_state(path)
        started, _ = timeutil.now()
        t0 = time.monotonic()
        calls: list[ModelCall] = []
        spec = (await self.spec(bead_id, _calls=calls, _settings=settings)).specification
        plan_rec = await self.plan(bead_id, _spec=spec, _calls=calls, _settings=settings, _path=path)
        plan = TestPlan(tests=plan_rec.tests)

        tests_of = {c.id: plan.for_criterion(c.id) for c in spec.acceptance_criteria}
        prints = {c.id: records.fingerprint(c, tests_of[c.id]) for c in spec.acceptance_criteria}
        reused = {} if dirty else self._reusable(bead_id, commit, prints, settings.level)
        todo = [c for c in spec.acceptance_criteria if c.id not in reused]
        to_run = [t for c in todo for t in tests_of[c.id]]
        results = await self._run_tests(to_run, path, settings) if to_run else []
        by_criterion: dict[str, list[TestResult]] = {c.id: [] for c in todo}
        for result in results:
            by_criterion[result.criterion_id].append(result)

        backend = self._backend_factory(settings)
        gate = asyncio.Semaphore(MODEL_PARALLELISM)
        decided = await asyncio.gather(*(
            self._decide(bead_id, c, by_criterion[c.id], settings, backend, gate, calls) for c in todo))
        fresh = dict(zip((c.id for c in todo), decided, strict=True))
        outcomes = [reused[c.id] if c.id in reused else fresh[c.id] for c in spec.acceptance_criteria]

        overall, summary = policy.overall([o.outcome for o in outcomes], settings.level)
        report = VerificationReport(
            bead_id=bead_id, commit=commit, dirty=dirty, worktree=str(path), level=settings.level,
            overall=overall, summary=summary, criteria=outcomes, model_calls=len(calls),
            model_cost_usd=round(sum(c.cost_usd for c in calls), 6),
            model_duration_ms=sum(c.duration_ms for c in calls), calls=calls, tests_run=len(results),
            cached_criteria=len(reused), started_at=started, duration_s=round(time.monotonic() - t0, 3),
            actor=self.actor,
        )
        records.ensure_schema(self.town.db)
        with self.town.db.write() as conn:
            if not dirty:
                for outcome in fresh.values():
                    if policy.cacheable(outcome.error):
                        records.store_outcome(conn, bead_id, commit, prints[outcome.criterion_id],
                                              settings.level, outcome)
            records.store_report(conn, report)
        await self.progress.note(f"{bead_id}: {overall} ({summary})")
        return report

    def _reusable(self, bead_id: str, commit: str, prints: dict[str, str], level: Level) -> dict[str, CriterionOutcome]:
        with self.town.db.read() as conn:
            cached = records.cached_outcomes(conn, bead_id, commit, prints)
        out: dict[str, CriterionOutcome] = {}
        for criterion_id, stage, cached_level, outcome in cached:
            if policy.reusable(stage, cached_level, level):
                out[criterion_id] = outcome.model_copy(update={"cached": True})
        return out

    async def _decide(
        self, bead_id: str, criterion: AcceptanceCriterion, results: list[TestResult], settings: InspectorSettings,
        backend: ModelBackend, gate: asyncio.Semaphore, calls: list[ModelCall],
    ) -> CriterionOutcome:
        """One criterion through the policy: Verifier's evidence, then Auditor, then panel."""
        summary = policy.summarize(results)
        decision = policy.after_tests(criterion.kind, summary, settings.level)

        def outcome(**decided: Any) -> CriterionOutcome:
            return CriterionOutcome(criterion_id=criterion.id, description=criterion.description,
                                    kind=criterion.kind, tests=results, **decided)

        if decision.next is None:
            assert decision.outcome is not None
            return outcome(outcome=decision.outcome, stage=decision.stage, reason=decision.reason)

        audit: AuditResult | None = None
        try:
            self.progress.expect(1)
            async with gate:
                audit = await self._ask(backend, auditor.call(criterion, results, decision.reason,
                                                              self._template("auditor")), calls, bead_id)
            await self.progress.step(f"auditor: {criterion.id} {'PASS' if audit.passed else 'FAIL'} "
                                     f"(confidence {audit.confidence:.2f})")
        except ModelError as exc:
            failed = policy.after_error("auditor", str(exc))
            return outcome(outcome="FAIL", stage="auditor", reason=failed.reason, error=str(exc))
        decision = policy.after_audit(audit.passed, audit.confidence, summary, settings.level,
                                      settings.min_confidence)
        if decision.next is None:
            assert decision.outcome is not None
            return outcome(outcome=decision.outcome, stage=decision.stage, reason=decision.reason, audit=audit)

        why = decision.reason
        try:
            self.progress.expect(3)
            async with gate:  # both sides argue at once; wait for both even if one fails
                sides = await asyncio.gather(
                    self._ask(backend, panel.advocate_call(criterion, results, audit, why,
                                                           self._template("advocate")), calls, bead_id),
                    self._ask(backend, panel.critic_call(criterion, results, audit, why,
                                                         self._template("critic")), calls, bead_id),
                    return_exceptions=True,
                )
            for side in sides:
                if isinstance(side, BaseException):
                    raise side
            advocate, critic = (cast(Argument, side) for side in sides)
            await self.progress.step(f"panel: {criterion.id} advocate argued")
            await self.progress.step(f"panel: {criterion.id} critic argued")
            async with gate:
                verdict = await self._ask(backend, panel.judge_call(criterion, results, audit, advocate, critic,
                                                                    why, self._template("judge")), calls, bead_id)
            await self.progress.step(f"judge: {criterion.id} {'PASS' if verdict.passed else 'FAIL'}")
        except ModelError as exc:
            failed = policy.after_error("panel", str(exc))
            return outcome(outcome="FAIL", stage="panel", reason=failed.reason, audit=audit, error=str(exc))
        final = policy.after_panel(verdict.passed, verdict.prevailing)
        assert final.outcome is not None
        return outcome(outcome=final.outcome, stage=final.stage, reason=f"{why}; {final.reason}", audit=audit,
                       advocate=advocate, critic=critic, verdict=verdict)

    # -- reports ---------------------------------------------------------------------------------

    def report(self, bead_id: str) -> VerificationReport:
        self._bead_row(bead_id)
        with self.town.db.read() as conn:
            report = records.latest_report(conn, bead_id)
        if report is None:
            raise NotFound(f"{bead_id} has not been verified yet; run verify_bead")
        return report


def verify_for_merge(
    town: Town, bead_id: str, worktree: str | Path, *, actor: str | None = None, level: str | None = None,
    progress: ProgressSink | None = None, env: Mapping[str, str] | None = None,
) -> VerificationReport:
    """Verify a merge candidate; blocking, for the refinery's merge queue (not for async callers).

    Merge only when the returned report's `overall` is "PASS". Raises VermasError (with an
    actionable message) when the bead cannot be verified at all; that is not a pass either.
    """
    if actor is None:
        rig = rig_for_bead(town, bead_id)
        actor = f"{rig.name}/refinery" if rig else "deacon"
    inspector = Inspector(town, actor, progress=progress, env=env)
    return asyncio.run(inspector.verify(bead_id, str(worktree), level))
