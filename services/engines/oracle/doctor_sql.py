"""The statements `tidemark doctor oracle` runs: V$ and DBA_ views only, nothing that writes.

Besides these, the doctor runs the engine's own statements (`rows.py`: V$DATABASE,
V$DATABASE_INCARNATION, V$THREAD, V$ARCHIVED_LOG, the SYSTIMESTAMP offset) and maps their rows
through the engine's own mappers, so a column a release names or types differently shows up as
a finding here rather than as a failed backup. Binds only; the IN lists are constants.
"""

from __future__ import annotations

__all__ = [
    "ARCHIVED_NEWEST_SQL",
    "ARCHIVE_DESTS_SQL",
    "BANNER_SQL",
    "BLOCK_CHANGE_TRACKING_SQL",
    "CDB_SQL",
    "DATAPUMP_DIRECTORY_SQL",
    "DATAPUMP_ROLES_SQL",
    "ENCRYPTED_TABLESPACES_SQL",
    "ENCRYPTION_WALLET_SQL",
    "INSTANCE_SQL",
    "ONLINE_LOGS_SQL",
    "OPTIONS_SQL",
    "PARAMETERS_SQL",
    "PASSWORD_FILE_USERS_SQL",
    "PLATFORM_SQL",
    "STANDBY_LOGS_SQL",
    "TIME_ZONES_SQL",
    "UNRECOVERABLE_SQL",
]

INSTANCE_SQL = "SELECT instance_name, version, thread# FROM v$instance"

BANNER_SQL = "SELECT banner FROM v$version WHERE banner LIKE 'Oracle Database%'"
"""The edition is read from the banner, the one place every release from 11.2 on names it
(V$INSTANCE.EDITION is newer)."""

CDB_SQL = "SELECT cdb FROM v$database"
"""A column from 12.1 on: ORA-00904 on 11.2, which means a non-CDB."""

PLATFORM_SQL = """\
SELECT d.platform_id, d.platform_name, t.endian_format
  FROM v$database d
  LEFT JOIN v$transportable_platform t ON t.platform_id = d.platform_id"""

TIME_ZONES_SQL = """\
SELECT dbtimezone AS db_time_zone, sessiontimezone AS session_time_zone FROM dual"""

PARAMETERS_SQL = """\
SELECT name, value
  FROM v$parameter
 WHERE name IN ('compatible', 'remote_login_passwordfile', 'standby_file_management',
                'db_recovery_file_dest', 'log_archive_format', 'dg_broker_start',
                'control_file_record_keep_time', 'archive_lag_target')
 ORDER BY name"""

ARCHIVE_DESTS_SQL = """\
SELECT dest_id, dest_name, status, target, destination, error
  FROM v$archive_dest
 WHERE status <> 'INACTIVE'
 ORDER BY dest_id"""

ARCHIVED_NEWEST_SQL = """\
SELECT COUNT(*) AS copies, MAX(recid) AS max_recid
  FROM v$archived_log
 WHERE dest_id = :dest_id AND archived = 'YES' AND status = 'A' AND standby_dest = 'NO'"""
"""How many readable copies the destination holds, and the newest RECID: the doctor then reads
that one row with the archiver's own statement."""

ONLINE_LOGS_SQL = """\
SELECT thread#, COUNT(*) AS groups, MAX(bytes) AS max_bytes, MAX(blocksize) AS block_size
  FROM v$log
 GROUP BY thread#
 ORDER BY thread#"""

STANDBY_LOGS_SQL = """\
SELECT thread#, COUNT(*) AS groups, MIN(bytes) AS min_bytes
  FROM v$standby_log
 GROUP BY thread#
 ORDER BY thread#"""

PASSWORD_FILE_USERS_SQL = "SELECT username, sysdba FROM v$pwfile_users ORDER BY username"  # noqa: S105 (a view name, not a secret)

ENCRYPTION_WALLET_SQL = "SELECT wrl_type, status, wallet_type FROM v$encryption_wallet"

ENCRYPTED_TABLESPACES_SQL = "SELECT COUNT(*) AS n FROM dba_tablespaces WHERE encrypted = 'YES'"

BLOCK_CHANGE_TRACKING_SQL = "SELECT status, filename FROM v$block_change_tracking"

OPTIONS_SQL = """\
SELECT parameter, value
  FROM v$option
 WHERE parameter IN ('Incremental backup and recovery', 'Parallel backup and recovery',
                     'Block Change Tracking', 'Backup Encryption', 'Advanced Compression',
                     'Oracle Data Guard')
 ORDER BY parameter"""
"""What the binaries enable, not what is licensed: the report says so."""

UNRECOVERABLE_SQL = """\
SELECT COUNT(*) AS files, MAX(unrecoverable_change#) AS newest
  FROM v$datafile
 WHERE unrecoverable_change# > 0"""

DATAPUMP_DIRECTORY_SQL = """\
SELECT directory_name, directory_path FROM dba_directories WHERE directory_name = :name"""

DATAPUMP_ROLES_SQL = """\
SELECT granted_role
  FROM dba_role_privs
 WHERE grantee = SYS_CONTEXT('USERENV', 'SESSION_USER')
   AND granted_role IN ('DATAPUMP_EXP_FULL_DATABASE', 'DATAPUMP_IMP_FULL_DATABASE', 'DBA')
 ORDER BY granted_role"""
"""Direct grants only: a role granted through another role is not seen here (the report says
"not seen", not "missing")."""
