"""The VerMAS inspector's data: what each role produces and what a verification reports.

Models that a model role answers with (Specification, TestPlan, AuditResult, Argument,
Verdict) are also the JSON schema handed to `claude -p --json-schema`, so their field
descriptions are instructions to the model. Checks a JSON schema cannot express (unique
ids, tests that name real criteria, quotes that really occur in the evidence) are pydantic
validators fed through the validation context; a failure there is what the backend retries
once, quoting the error back to the model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

CRITERION_ID_RE = r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$"
MAX_CRITERIA = 40
MAX_TESTS = 120
MAX_COMMAND_CHARS = 4000
MAX_QUOTES = 12
MAX_QUOTE_CHARS = 1000
DEFAULT_TEST_TIMEOUT = 60.0
MAX_TEST_TIMEOUT = 3600.0

Kind = Literal["objective", "subjective"]
Outcome = Literal["PASS", "FAIL", "SKIPPED"]
Overall = Literal["PASS", "FAIL"]
Stage = Literal["verifier", "auditor", "panel", "policy"]
Level = Literal["shell", "audit", "full"]
LEVELS: tuple[str, ...] = ("shell", "audit", "full")


def normalise(text: str) -> str:
    """Collapse whitespace so a quote survives re-wrapping by the model."""
    return " ".join(text.split())


def check_quotes(quotes: list[str], info: ValidationInfo) -> list[str]:
    """Every quote must occur in the evidence the role was shown (context key `evidence_text`).

    Why: quotes are how a reader checks a model's judgement against what really happened; a
    quote the evidence does not contain is an invention, so the answer is rejected (and the
    backend asks once more, naming the bad quote). Without a context nothing is checked, so
    stored reports load without their evidence.
    """
    context = info.context or {}
    if "evidence_text" not in context:
        return quotes
    haystack = normalise(str(context["evidence_text"]))
    for quote in quotes:
        needle = normalise(quote)
        if not needle:
            raise ValueError("a quote is empty; quote exact text from the evidence or give no quotes")
        if needle not in haystack:
            raise ValueError(
                f"quote {quote[:120]!r} does not occur in the evidence; quote only exact text from "
                "the command output shown (or leave quotes empty)"
            )
    return quotes


# ---------------------------------------------------------------------------------------------
# Designer
# ---------------------------------------------------------------------------------------------


class AcceptanceCriterion(BaseModel):
    id: str = Field(pattern=CRITERION_ID_RE, description="Short stable id: AC-1, AC-2, ...")
    description: str = Field(
        min_length=1, max_length=2000,
        description="One checkable statement about the finished work.",
    )
    test_hint: str = Field(
        default="", max_length=2000,
        description="How a shell command could check it (file, command, expected output).",
    )
    kind: Kind = Field(
        description="objective: a shell command's exit status can decide it; "
        "subjective: needs judgement (readability, clarity, design quality).",
    )


class Specification(BaseModel):
    title: str = Field(min_length=1, max_length=500)
    requirements: list[str] = Field(
        default_factory=list, max_length=60,
        description="Functional requirements and edge cases, one per item (R1: ..., R2: ...).",
    )
    acceptance_criteria: list[AcceptanceCriterion] = Field(min_length=1, max_length=MAX_CRITERIA)

    @model_validator(mode="after")
    def _unique_ids(self) -> Specification:
        seen: set[str] = set()
        for criterion in self.acceptance_criteria:
            if criterion.id in seen:
                raise ValueError(f"acceptance criterion id {criterion.id!r} is used twice; ids must be unique")
            seen.add(criterion.id)
        return self

    def criterion(self, criterion_id: str) -> AcceptanceCriterion:
        for criterion in self.acceptance_criteria:
            if criterion.id == criterion_id:
                return criterion
        raise KeyError(criterion_id)

    def render_acceptance_criteria(self) -> str:
        """The criteria as bd's free-text `acceptance_criteria` field shows them."""
        lines = []
        for c in self.acceptance_criteria:
            lines.append(f"- [ ] {c.id} ({c.kind}): {c.description}")
            if c.test_hint:
                lines.append(f"  - check: {c.test_hint}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Strategist
# ---------------------------------------------------------------------------------------------


class TestSpec(BaseModel):
    __test__ = False  # not a pytest class

    criterion_id: str = Field(pattern=CRITERION_ID_RE)
    command: str = Field(
        min_length=1, max_length=MAX_COMMAND_CHARS,
        description="A shell command run in the candidate's work tree; exit 0 means the criterion holds.",
    )
    description: str = Field(default="", max_length=1000, description="What the command checks.")
    timeout: float = Field(default=DEFAULT_TEST_TIMEOUT, gt=0, le=MAX_TEST_TIMEOUT, description="Seconds.")

    @field_validator("command")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("command contains a NUL byte")
        if not value.strip():
            raise ValueError("command is blank")
        return value


class TestPlan(BaseModel):
    __test__ = False

    tests: list[TestSpec] = Field(min_length=1, max_length=MAX_TESTS)

    @model_validator(mode="after")
    def _covers_spec(self, info: ValidationInfo) -> TestPlan:
        """With the spec in the context: tests name real criteria and cover every objective one."""
        spec = (info.context or {}).get("spec")
        if not isinstance(spec, Specification):
            return self
        known = {c.id for c in spec.acceptance_criteria}
        for test in self.tests:
            if test.criterion_id not in known:
                raise ValueError(
                    f"test for unknown criterion {test.criterion_id!r}; the specification's criteria "
                    f"are {', '.join(sorted(known))}"
                )
        covered = {t.criterion_id for t in self.tests}
        missing = [c.id for c in spec.acceptance_criteria if c.kind == "objective" and c.id not in covered]
        if missing:
            raise ValueError(f"objective criteria without a test: {', '.join(missing)}; give each at least one")
        return self

    def for_criterion(self, criterion_id: str) -> list[TestSpec]:
        return [t for t in self.tests if t.criterion_id == criterion_id]


# ---------------------------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------------------------


class Evidence(BaseModel):
    """What one test command did, captured by the Verifier (no model involved)."""

    command: str
    output: str = Field(description="stdout and stderr interleaved; head and tail kept past the cap")
    output_bytes: int = Field(description="bytes the command wrote in total")
    truncated: bool = False
    exit_code: int | None = Field(description="None when it did not exit by itself")
    signal: str | None = None
    duration_s: float
    timed_out: bool = False
    flooded: bool = Field(default=False, description="killed for writing more than the flood limit")
    error: str | None = Field(default=None, description="why the command could not be started")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failure(self) -> str | None:
        """How the test failed, in words, or None if it exited 0."""
        if self.error:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"timed out after {self.duration_s:.1f}s; its process group was killed"
        if self.flooded:
            return f"flooded its output ({self.output_bytes} bytes); its process group was killed"
        if self.signal:
            return f"killed by {self.signal}"
        if self.exit_code == 0:
            return None
        if self.exit_code == 127:
            return "exit code 127 (command not found)"
        if self.exit_code == 126:
            return "exit code 126 (command not executable)"
        return f"exit code {self.exit_code}"


class TestResult(BaseModel):
    __test__ = False

    criterion_id: str
    description: str = ""
    passed: bool
    evidence: Evidence


class TestRun(BaseModel):
    """What verify_run returns: the Verifier's results for a bead's plan at one commit."""

    bead_id: str
    worktree: str
    commit: str
    dirty: bool
    passed: int
    failed: int
    duration_s: float
    results: list[TestResult]

    def compact(self) -> TestRun:
        return self.model_copy(update={"results": [compact_result(r) for r in self.results]})


PASSED_OUTPUT_CHARS = 1_000
FAILED_OUTPUT_CHARS = 8_000


def compact_result(result: TestResult) -> TestResult:
    """A test result with its output clipped for a model's context (the store keeps it whole):
    a pass needs little proof, a failure keeps enough to show why."""
    limit = PASSED_OUTPUT_CHARS if result.passed else FAILED_OUTPUT_CHARS
    if len(result.evidence.output) <= limit:
        return result
    evidence = result.evidence.model_copy(update={"output": clip(result.evidence.output, limit)})
    return result.model_copy(update={"evidence": evidence})


# ---------------------------------------------------------------------------------------------
# Auditor and panel
# ---------------------------------------------------------------------------------------------


class AuditResult(BaseModel):
    passed: bool = Field(description="true if the evidence shows the criterion is met")
    reasoning: str = Field(min_length=1, max_length=8000)
    quotes: list[str] = Field(
        default_factory=list, max_length=MAX_QUOTES,
        description="Exact excerpts of the evidence that support the judgement.",
    )
    confidence: float = Field(ge=0.0, le=1.0, description="0 (guess) to 1 (certain)")

    @field_validator("quotes")
    @classmethod
    def _quotes_in_evidence(cls, quotes: list[str], info: ValidationInfo) -> list[str]:
        return check_quotes(quotes, info)


class Argument(BaseModel):
    """One side's case in the adversarial panel (Advocate argues PASS, Critic argues FAIL)."""

    argument: str = Field(min_length=1, max_length=8000)
    quotes: list[str] = Field(default_factory=list, max_length=MAX_QUOTES)

    @field_validator("quotes")
    @classmethod
    def _quotes_in_evidence(cls, quotes: list[str], info: ValidationInfo) -> list[str]:
        return check_quotes(quotes, info)


class Verdict(BaseModel):
    passed: bool
    prevailing: Literal["advocate", "critic"] = Field(description="whose case the verdict follows")
    reasoning: str = Field(min_length=1, max_length=8000)
    quotes: list[str] = Field(default_factory=list, max_length=MAX_QUOTES)

    @field_validator("quotes")
    @classmethod
    def _quotes_in_evidence(cls, quotes: list[str], info: ValidationInfo) -> list[str]:
        return check_quotes(quotes, info)

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.passed != (self.prevailing == "advocate"):
            raise ValueError(
                "verdict is inconsistent: passed=true must follow the advocate and passed=false the critic"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


class ModelCall(BaseModel):
    """One `claude -p` invocation, with what Claude's JSON result said it cost."""

    role: str
    criterion_id: str | None = None
    attempt: int = 1
    model: str
    ok: bool
    cost_usd: float = 0.0
    duration_ms: int = 0
    error: str | None = None
    # Claude's JSON result's `usage` (0 where it gave none; older records lack them)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0


class CriterionOutcome(BaseModel):
    criterion_id: str
    description: str
    kind: Kind
    outcome: Outcome
    stage: Stage = Field(description="which stage decided: verifier, auditor, panel, or policy (level limits)")
    reason: str
    tests: list[TestResult] = Field(default_factory=list)
    audit: AuditResult | None = None
    advocate: Argument | None = None
    critic: Argument | None = None
    verdict: Verdict | None = None
    error: str | None = None
    cached: bool = False


class VerificationReport(BaseModel):
    bead_id: str
    commit: str
    dirty: bool = False
    worktree: str
    level: Level
    overall: Overall
    summary: str
    criteria: list[CriterionOutcome]
    model_calls: int
    model_cost_usd: float
    model_duration_ms: int
    calls: list[ModelCall] = Field(default_factory=list)
    tests_run: int
    cached_criteria: int
    started_at: str
    duration_s: float
    actor: str

    def outcome(self, criterion_id: str) -> CriterionOutcome:
        for c in self.criteria:
            if c.criterion_id == criterion_id:
                return c
        raise KeyError(criterion_id)

    def compact(self) -> VerificationReport:
        """The report with test output clipped (see compact_result), for MCP answers."""
        criteria = [c.model_copy(update={"tests": [compact_result(t) for t in c.tests]}) for c in self.criteria]
        return self.model_copy(update={"criteria": criteria})

    def summarize(self) -> VerificationSummary:
        return VerificationSummary(
            commit=self.commit, level=self.level, overall=self.overall, summary=self.summary,
            started_at=self.started_at, model_calls=self.model_calls,
            criteria=[CriterionSummary(criterion_id=c.criterion_id, outcome=c.outcome, stage=c.stage,
                                       reason=c.reason[:300]) for c in self.criteria],
        )


class CriterionSummary(BaseModel):
    criterion_id: str
    outcome: Outcome
    stage: Stage
    reason: str


class VerificationSummary(BaseModel):
    """A few hundred bytes about a bead's latest verification (for bead_show)."""

    commit: str
    level: Level
    overall: Overall
    summary: str
    started_at: str
    model_calls: int
    criteria: list[CriterionSummary]


def to_context_text(results: list[TestResult], limit: int | None = None) -> str:
    """The evidence of some tests as one text block (what a role sees and what quotes must match)."""
    parts = []
    for r in results:
        ev = r.evidence
        output = ev.output if limit is None else clip(ev.output, limit)
        parts.append(
            f"$ {ev.command}\n{output}\n[{'PASS' if r.passed else 'FAIL'}: {ev.failure or 'exit code 0'}]"
        )
    return "\n\n".join(parts)


def clip(text: str, limit: int) -> str:
    """Keep head and tail of text longer than limit characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters omitted ...]\n{text[-half:]}"

