"""Oracle error codes, classified once: what a failed RMAN, Data Pump or dgmgrl run means.

Every Oracle tool reports failure as a stack of coded lines. The outer lines are wrappers that
only say which command failed (RMAN-03002 "failure of recover command", RMAN-03009 per channel,
UDE-00008 "operation generated ORACLE error"); the inner lines say why. So a stack is classified
by its inner codes, never by its wrapper: RMAN-03009 over ORA-19511 is a media manager hiccup
worth retrying, RMAN-03009 over ORA-01017 is a bad credential that no retry will fix.

A stack's verdict is the worst of its deciding codes, in this order:

    FATAL      retrying the same command cannot succeed (bad configuration, wrong incarnation,
               a real gap in the logs, a target the base cannot reach): re-plan or fix first
    RETRYABLE  transient (instance or network down, media manager, space being freed)
    WARNING    the command did what it was asked; the code is worth a log line
    (CONTEXT)  lines that annotate another (ORA-01110 names the file): they never decide
    (WRAPPER)  lines that only wrap another; alone, they decide FATAL

A code not in the table is FATAL: an error we have not understood is not one to loop on.

Some codes are benign in one workflow only (ORA-31684 "already exists" for Oracle's own
tablespaces in a full Data Pump import, never for a schema into a fresh target): they are FATAL
here and allowed per workflow, with the objects they may name, by `BENIGN_IN` (`benign_in`).
Source: `reference/oracle.md` §7, plus the Data Pump notes of §3.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.messages import Failure

__all__ = [
    "BENIGN_IN",
    "CODE_RE",
    "Allowance",
    "Classification",
    "Rule",
    "Verdict",
    "benign_in",
    "classify",
    "codes_in",
    "rule_for",
]


class Verdict(enum.Enum):
    """What a code means for the command that raised it (module docstring)."""

    FATAL = "fatal"
    RETRYABLE = "retryable"
    WARNING = "warning"
    CONTEXT = "context"
    WRAPPER = "wrapper"


@dataclass(frozen=True)
class Rule:
    verdict: Verdict
    meaning: str
    action: str


def _r(verdict: Verdict, meaning: str, action: str = "") -> Rule:
    return Rule(verdict, meaning, action)


F, R, W, C, X = Verdict.FATAL, Verdict.RETRYABLE, Verdict.WARNING, Verdict.CONTEXT, Verdict.WRAPPER

_TABLE: dict[str, Rule] = {
    # -- RMAN stack headers and wrappers
    "RMAN-00569": _r(X, "error message stack follows"),
    "RMAN-00571": _r(X, "error message stack separator"),
    "RMAN-03002": _r(X, "failure of a command"),
    "RMAN-03009": _r(X, "failure of a command on one channel"),
    "RMAN-03015": _r(X, "error in a stored script"),
    "RMAN-00554": _r(X, "initialization of the recovery manager package failed (cause below)"),
    "RMAN-04005": _r(X, "error from the target database (the ORA line below)"),
    "RMAN-04006": _r(X, "error from the auxiliary database (the ORA line below)"),
    "RMAN-06010": _r(C, "error while looking up a datafile"),
    # -- RMAN syntax and configuration
    "RMAN-00558": _r(F, "error while parsing the command"),
    "RMAN-01009": _r(F, "syntax error"),
    "RMAN-01008": _r(F, "bad identifier"),
    "RMAN-05088": _r(F, "no destination for converted files", "set FORMAT or DB_CREATE_FILE_DEST"),
    "RMAN-05137": _r(F, "no destination for converted files", "set FORMAT or DB_CREATE_FILE_DEST"),
    "RMAN-06591": _r(F, "ALLOW INCONSISTENT needs a cross-platform backup"),
    # -- RMAN restore and recovery
    "RMAN-06054": _r(
        F,
        "media recovery is asking for an archived log it does not know",
        "the restore plan lacks a log (a real gap, or not staged): re-plan",
    ),
    "RMAN-06023": _r(F, "no backup or copy of a datafile to restore", "re-plan with another base"),
    "RMAN-06025": _r(F, "no backup of an archived log to restore", "re-plan"),
    "RMAN-06026": _r(F, "some targets not found, restore aborted", "re-plan"),
    # The same script again finds the same log missing: only a crosscheck or a new plan helps.
    "RMAN-06059": _r(F, "an expected archived log is missing", "crosscheck, then re-plan"),
    "RMAN-20208": _r(F, "UNTIL CHANGE is before RESETLOGS change", "RESET DATABASE first"),
    "RMAN-20207": _r(F, "UNTIL TIME is before RESETLOGS time", "RESET DATABASE first"),
    "RMAN-06180": _r(F, "incremental backups need Enterprise Edition"),
    "RMAN-06809": _r(F, "this compression algorithm needs Advanced Compression"),
    "RMAN-06496": _r(F, "RESTORE CONTROLFILE needs TO while the database is mounted or open"),
    "RMAN-06188": _r(F, "SET DBID is refused while the target database is mounted"),
    "RMAN-06004": _r(C, "recovery catalog lookup error"),
    # -- RMAN warnings
    "RMAN-08137": _r(W, "archived log kept: a standby still needs it"),
    "RMAN-08120": _r(W, "archived log not deleted: not yet applied or backed up"),
    "RMAN-06755": _r(W, "incremental start SCN too recent, file skipped"),
    # -- ORA: media, files, space
    "ORA-19511": _r(R, "media manager error", "retry with backoff"),
    # RMAN has already failed over to older backups: the piece is gone, not slow.
    "ORA-19505": _r(F, "failed to identify a file", "re-stage the piece, or re-plan"),
    "ORA-19573": _r(F, "cannot obtain exclusive enqueue for a datafile (database open)"),
    "ORA-01124": _r(F, "cannot recover a datafile in use (database open)"),
    "ORA-01843": _r(F, "not a valid month"),
    "ORA-01847": _r(F, "day of month must be between 1 and last day of month"),
    "ORA-01850": _r(F, "hour must be between 0 and 23"),
    "ORA-01851": _r(F, "minutes must be between 0 and 59"),
    "ORA-01852": _r(F, "seconds must be between 0 and 59"),
    "ORA-27037": _r(C, "unable to obtain file status"),
    "ORA-27041": _r(C, "unable to open file"),
    "ORA-00230": _r(R, "snapshot control file enqueue unavailable", "retry"),
    "ORA-00245": _r(F, "control file backup failed: snapshot location not shared"),
    "ORA-19809": _r(R, "recovery area limit exceeded", "free space, retry"),
    "ORA-19804": _r(R, "cannot reclaim space in the recovery area", "free space, retry"),
    "ORA-00257": _r(R, "archiver stuck", "emergency cleanup of the archive destination"),
    # -- ORA: recovery reached the wrong place
    "ORA-01547": _r(F, "RECOVER succeeded but OPEN RESETLOGS would fail", "see the next error"),
    "ORA-01194": _r(
        F, "a file needs more recovery to be consistent", "recover further, or use an older base"
    ),
    "ORA-01152": _r(F, "a file was not restored from a backup old enough", "use an older base"),
    "ORA-01110": _r(C, "names the datafile of the error above"),
    "ORA-01190": _r(F, "a file is from before the last RESETLOGS", "wrong incarnation"),
    "ORA-01209": _r(F, "a file is from before the last RESETLOGS", "wrong incarnation"),
    "ORA-19638": _r(F, "incremental backup does not follow the file's SCN", "re-plan the SCN"),
    "ORA-19625": _r(F, "error identifying a file", "re-plan"),
    # -- ORA: a restored copy opened in another home (the `rman` migration)
    "ORA-39700": _r(F, "database must be opened with UPGRADE option", "OPEN RESETLOGS UPGRADE"),
    "ORA-01092": _r(X, "instance terminated, disconnection forced (the cause below)"),
    "ORA-00704": _r(X, "bootstrap process failure (the cause below)"),
    "ORA-00201": _r(F, "control file of a newer release than this home", "a home >= the source"),
    "ORA-01507": _r(F, "database not mounted"),
    "ORA-01035": _r(F, "only users with RESTRICTED SESSION may log on", "wait for the unfence"),
    # -- ORA: cross-platform encryption / compression
    "ORA-19990": _r(F, "encrypted backup cannot cross platforms"),
    "ORA-19991": _r(F, "encrypted backup cannot cross platforms"),
    "ORA-19992": _r(F, "encrypted backup cannot cross platforms"),
    "ORA-19994": _r(F, "compressed backup cannot cross endianness"),
    "ORA-19699": _r(F, "compressed backup not allowed here"),
    # -- ORA: instance down, network
    "ORA-01034": _r(R, "Oracle not available"),
    "ORA-27101": _r(R, "shared memory realm does not exist"),
    "ORA-12514": _r(R, "listener does not know the service"),
    "ORA-12541": _r(R, "no listener"),
    "ORA-03113": _r(R, "end-of-file on communication channel"),
    "ORA-03135": _r(R, "connection lost contact"),
    "ORA-17629": _r(R, "cannot connect to the remote database server"),
    "ORA-01033": _r(R, "initialization or shutdown in progress"),
    "ORA-01089": _r(R, "immediate shutdown or close in progress"),
    "ORA-00020": _r(R, "maximum number of processes exceeded"),
    "ORA-12516": _r(R, "listener has no handler available"),
    "ORA-12520": _r(R, "listener has no handler for the requested server type"),
    "ORA-12528": _r(R, "listener: all handlers are blocking new connections"),
    "ORA-12170": _r(R, "connect timeout"),
    "ORA-03114": _r(R, "not connected to Oracle"),
    "ORA-12537": _r(R, "TNS connection closed"),
    "ORA-12547": _r(R, "TNS lost contact"),
    # -- ORA: authentication
    "ORA-01017": _r(F, "invalid username/password; logon denied", "fix the wallet or OS auth"),
    "ORA-01031": _r(F, "insufficient privileges"),
    "ORA-28009": _r(F, "connection as SYS should be as SYSDBA or SYSOPER"),
    "ORA-16191": _r(F, "primary log shipping client not logged on standby (password file)"),
    # -- ORA: Data Pump (reference/migration.md §5; benign ones only where `BENIGN_IN` says)
    "ORA-39171": _r(R, "job is experiencing a resumable wait", "add space; the job resumes"),
    "ORA-01652": _r(R, "unable to extend temp segment", "add space"),
    "ORA-01653": _r(R, "unable to extend table", "add space"),
    "ORA-01688": _r(R, "unable to extend table partition", "add space"),
    "ORA-39169": _r(F, "local version cannot work with the remote version"),
    "ORA-39358": _r(F, "export dump file version not compatible"),
    "ORA-39142": _r(F, "incompatible version number in the dump file", "export with VERSION="),
    "ORA-39256": _r(F, "source database must be read/write for this mode"),
    # Fatal unless the workflow's allow-list names the object: on a fresh target an object
    # that already exists means the target was not fresh.
    "ORA-31684": _r(F, "object already exists", "benign only where the workflow allows it"),
    "ORA-31685": _r(F, "object type failed due to insufficient privileges (benign in full)"),
    "ORA-39082": _r(F, "object created with compilation warnings", "recompile, list INVALIDs"),
    # Under TABLE_EXISTS_ACTION=SKIP the table's rows were not loaded: never benign.
    "ORA-39151": _r(F, "table exists and was skipped: its data was not loaded", "empty target"),
    "ORA-39152": _r(F, "table exists: rows appended, its dependent metadata skipped"),
    "ORA-39153": _r(F, "table exists and was truncated: its dependent metadata skipped"),
    "ORA-39083": _r(F, "object type failed to create", "investigate"),
    "ORA-31693": _r(F, "table data object failed to load", "investigate (the cause below)"),
    "ORA-31679": _r(F, "a LONG column cannot cross a network link", "use a dump set"),
    "ORA-39165": _r(F, "schema not found"),
    "ORA-31655": _r(F, "no data or metadata objects selected for the job"),
    "ORA-39001": _r(X, "invalid argument value (the cause below)"),
    "ORA-39000": _r(X, "bad dump file specification (the cause below)"),
    "ORA-39002": _r(X, "invalid operation (the cause below)"),
    "ORA-39005": _r(X, "inconsistent arguments (the cause below)"),
    "ORA-39070": _r(X, "unable to open the log file (the cause below)"),
    "ORA-39200": _r(X, "database link name is invalid (the cause below)"),
    "ORA-31640": _r(F, "unable to open a dump file for read", "stage the whole dump set"),
    "ORA-31641": _r(F, "unable to create a dump file", "clear the staging directory"),
    "ORA-31619": _r(F, "not a dump file"),
    "ORA-27038": _r(C, "created file already exists"),
    "ORA-39087": _r(F, "directory object does not exist", "create the directory object"),
    "ORA-02019": _r(F, "database link names no remote database", "create the link"),
    "ORA-39208": _r(F, "parameter not valid for this kind of job"),
    "ORA-39201": _r(F, "dump files are not supported for estimate-only jobs"),
    "ORA-31626": _r(F, "job does not exist (nothing to attach to)"),
    "ORA-31634": _r(F, "job already exists", "attach to it, or drop its control table"),
    "ORA-39004": _r(F, "invalid state for this job command"),
    "ORA-39014": _r(R, "workers exited prematurely", "attach and START_JOB"),
    "ORA-39029": _r(R, "a worker process terminated prematurely", "attach and START_JOB"),
    "ORA-39126": _r(F, "worker unexpected fatal error", "investigate"),
    "ORA-39246": _r(F, "cannot locate the master table in the dump files"),
    "KUP-11007": _r(F, "conversion error loading a table (external tables path)"),
    "UDE-00008": _r(X, "operation generated ORACLE error"),
    "UDI-00008": _r(X, "operation generated ORACLE error"),
    "UDE-31626": _r(X, "job does not exist"),
    "UDI-31626": _r(X, "job does not exist"),
    "UDE-00010": _r(F, "multiple job modes requested"),
    "UDI-00010": _r(F, "multiple job modes requested"),
    "UDE-00011": _r(F, "parameter incompatible with another"),
    "UDI-00011": _r(F, "parameter incompatible with another"),
    "UDE-00014": _r(F, "invalid value for a parameter"),
    "UDI-00014": _r(F, "invalid value for a parameter"),
    "UDE-00053": _r(F, "unrecognized interactive command"),
    "UDI-00053": _r(F, "unrecognized interactive command"),
    "LRM-00101": _r(F, "unknown parameter name"),
    "LRM-00108": _r(F, "invalid positional parameter value"),
    "LRM-00109": _r(F, "could not open the parameter file"),
    "LRM-00113": _r(X, "error when processing the parameter file (the cause above)"),
    "LRM-00121": _r(F, "value not allowed for this parameter"),
    # -- ORA: Data Guard switchover
    "ORA-16470": _r(F, "redo apply is not running on the switchover target", "start apply"),
    "ORA-16467": _r(R, "switchover target is not synchronized", "wait"),
    "ORA-16475": _r(W, "switchover verify succeeded with warnings", "read the alert log"),
    "ORA-16471": _r(F, "switchover failed midway", "ALTER DATABASE SWITCHOVER ... FORCE"),
    "ORA-16465": _r(F, "SWITCHOVER (or its VERIFY) must be issued on an open primary"),
    # -- ORA: Data Guard roles, apply and the broker (reference/migration.md §3.6-3.7)
    "ORA-16473": _r(F, "database is not in limbo: FORCE refused", "start Redo Apply, then FORCE"),
    "ORA-16464": _r(F, "FORCE or FAILOVER must be issued on a physical standby"),
    "ORA-16766": _r(F, "Redo Apply is stopped", "start Redo Apply"),
    "ORA-16789": _r(F, "standby redo logs are not configured", "add N+1 per thread"),
    "ORA-16853": _r(W, "apply lag exceeded ApplyLagThreshold", "the lag gate decides"),
    "ORA-16855": _r(W, "transport lag exceeded TransportLagThreshold", "the lag gate decides"),
    "ORA-16857": _r(R, "standby disconnected from the redo source too long", "network"),
    "ORA-16501": _r(X, "the broker operation failed (the cause below)"),
    "ORA-16502": _r(W, "the broker operation succeeded with warnings"),
    "ORA-16608": _r(W, "one or more members have warnings"),
    "ORA-16809": _r(W, "multiple warnings detected for the member", "SHOW DATABASE"),
    "ORA-16810": _r(F, "multiple errors or warnings detected for the member", "SHOW DATABASE"),
    "ORA-16661": _r(F, "the standby must be reinstated", "REINSTATE DATABASE"),
    "ORA-16795": _r(F, "the standby must be re-created"),
    "ORA-16541": _r(F, "the member is not enabled in the broker configuration"),
    # Stopping apply that does not run, or starting apply that runs: benign where allowed.
    "ORA-16136": _r(F, "Managed Standby Recovery not active"),
    "ORA-01153": _r(F, "an incompatible media recovery is active"),
    "ORA-01665": _r(F, "control file is not a standby control file (not a standby)"),
    "ORA-01081": _r(F, "cannot start an instance that is running"),
    "ORA-01531": _r(F, "the database is already open"),
    "ORA-00600": _r(F, "internal error", "read the alert log and the trace"),
    "RMAN-05500": _r(F, "the auxiliary must not be mounted for DUPLICATE", "start it NOMOUNT"),
    "RMAN-06171": _r(F, "not connected to the target database"),
    # -- ORA: what `doctor oracle` meets reading views it may not be granted
    "ORA-00942": _r(F, "table or view does not exist (or is not granted)", "grant SELECT on it"),
    "ORA-00904": _r(F, "invalid identifier: a column this release does not have"),
    "ORA-00900": _r(F, "invalid SQL statement"),
    "ORA-28365": _r(F, "wallet is not open", "open the TDE keystore"),
    # -- python-oracledb Thin driver
    "DPY-6005": _r(R, "cannot connect to the database"),
    "DPY-4011": _r(R, "the database or network closed the connection"),
}

CODE_RE = re.compile(r"\b(RMAN|ORA|UDE|UDI|KUP|LRM|DPY)-(\d{4,5})\b")
"""An Oracle error code in a line of tool output."""

_ORDER = {Verdict.FATAL: 0, Verdict.RETRYABLE: 1, Verdict.WARNING: 2}


def rule_for(code: str) -> Rule:
    """The rule for one code; unknown codes are FATAL (module docstring), UDE/UDI ones wrappers
    (the Data Pump clients wrap an ORA cause)."""
    rule = _TABLE.get(code)
    if rule is not None:
        return rule
    if code.startswith(("UDE-", "UDI-")):
        return _r(X, "Data Pump client error")
    return _r(F, "not a code Tidemark knows")


def codes_in(lines: Iterable[str]) -> list[tuple[str, str]]:
    """Every (code, line) in tool output, in order; one line may carry several codes."""
    found: list[tuple[str, str]] = []
    for line in lines:
        for match in CODE_RE.finditer(line):
            prefix, number = match.group(1), match.group(2)
            # python-oracledb's own codes have four digits (DPY-6005); Oracle's have five.
            width = 4 if prefix == "DPY" else 5
            found.append((f"{prefix}-{number.zfill(width)}", line.strip()))
    return found


@dataclass(frozen=True)
class Classification:
    """The verdict of one error stack, the code that decided it and its line."""

    verdict: Verdict
    code: str | None
    line: str
    codes: tuple[str, ...]

    @property
    def retryable(self) -> bool:
        return self.verdict is Verdict.RETRYABLE

    @property
    def fatal(self) -> bool:
        return self.verdict is Verdict.FATAL

    def failure(self, what: str) -> Failure:
        """The `Failure` the executor reports: `what` failed, because of the deciding line."""
        rule = rule_for(self.code) if self.code else None
        because = self.line or "no Oracle error code in its output"
        action = f" ({rule.action})" if rule and rule.action else ""
        return Failure(
            reason=f"{what}: {because}{action}"[:2000],
            code=self.code,
            retryable=self.retryable,
        )


def classify(lines: Iterable[str]) -> Classification:
    """Classify an error stack from tool output lines (module docstring for the order)."""
    found = codes_in(lines)
    codes = tuple(code for code, _ in found)
    best: tuple[Verdict, str, str] | None = None
    for code, line in found:
        verdict = rule_for(code).verdict
        if verdict in (Verdict.CONTEXT, Verdict.WRAPPER):
            continue
        if best is None or _ORDER[verdict] < _ORDER[best[0]]:
            best = (verdict, code, line)
    if best is not None:
        return Classification(best[0], best[1], best[2], codes)
    if found:
        # Only wrappers and annotations: the cause was not printed, so nothing says a retry helps.
        code, line = found[0]
        return Classification(Verdict.FATAL, code, line, codes)
    return Classification(Verdict.FATAL, None, "", codes)


# -- benign in one workflow ---------------------------------------------------------------------


@dataclass(frozen=True)
class Allowance:
    """A code that loses nothing in one workflow, for the objects `line` matches, and why."""

    code: str
    line: re.Pattern[str]
    why: str


_COMPILE_WARNINGS = Allowance(
    "ORA-39082",
    re.compile(r'Object type \w+(?: \w+)?:"[^"]+"\."[^"]+" created with compilation warnings'),
    "the object exists; validation recompiles it and lists what stays INVALID",
)

BENIGN_IN: dict[str, tuple[Allowance, ...]] = {
    # Any error of an export is a finding: the dump set is what every later step trusts.
    "datapump.export": (),
    # Into a fresh target: the schemas' users do not exist yet, so ORA-31684 is not here; a
    # table that exists (ORA-39151/39152/39153) means rows not loaded or loaded twice.
    "datapump.schema_import": (_COMPILE_WARNINGS,),
    # A full import meets what every database has (reference/oracle.md §3, the FTEX run's
    # "completed with 63 error(s)"): Oracle's tablespaces, users and roles, and SYS's grants.
    "datapump.full_import": (
        _COMPILE_WARNINGS,
        Allowance(
            "ORA-31684",
            re.compile(
                r'Object type (?:TABLESPACE:"(?:SYSTEM|SYSAUX|UNDOTBS\d*|TEMP\d*|USERS)"'
                r'|USER:"(?:OUTLN|SYSTEM|SYS|DBSNMP|APPQOSSYS|AUDSYS|GSMADMIN_INTERNAL)"'
                r'|ROLE:"(?:CONNECT|RESOURCE|DBA|SELECT_CATALOG_ROLE|EXECUTE_CATALOG_ROLE)")'
                r" already exists"
            ),
            "Oracle's own object, created with every database",
        ),
        Allowance(
            "ORA-31685",
            re.compile(r'USER:"SYS" failed due to insufficient privileges'),
            "SYS's own settings are not imported, by design",
        ),
    ),
    # Redo Apply is started when it is not seen running: one started in between runs.
    "dataguard.start_apply": (
        Allowance("ORA-01153", re.compile(r"incompatible media recovery"), "apply runs already"),
    ),
}
"""Per workflow, the codes that are benign there (a Data Pump exit 5 is judged by these, never
by the exit code): everything else printed is decided by the table above."""


def benign_in(workflow: str, code: str, line: str) -> Allowance | None:
    """The allowance that makes `code` on `line` benign in `workflow`, or None."""
    for allowance in BENIGN_IN[workflow]:
        if allowance.code == code and allowance.line.search(line):
            return allowance
    return None
