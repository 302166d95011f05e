"""Runs SQL statements in current ClickHouse's engine, in-process (chdb), for
test/clickhouse/current-clickhouse.test.ts.

    python run.py OUT.json < IN.json

IN.json: {"statements": [{"sql": "...", "format": "JSON" | null}, ...]}. All run in order in one
session (one throw-away database directory), so tables created by one are there for the next.
A statement that fails does not stop the others. OUT.json: one entry per statement,
{"ok": true, "result": <parsed JSON output, or null without a format>} or {"ok": false,
"error": "Code: ... DB::Exception: ..."}. The time zone is the process's (set TZ).
"""
import json
import shutil
import sys
import tempfile

from chdb import session


def main() -> None:
    request = json.load(sys.stdin)
    path = tempfile.mkdtemp(prefix="trajstore-chdb-")
    results = []
    try:
        s = session.Session(path)
        for statement in request["statements"]:
            fmt = statement.get("format")
            try:
                out = s.query(statement["sql"], fmt) if fmt else s.query(statement["sql"])
                text = out.bytes().decode("utf-8") if fmt else ""
                results.append({"ok": True, "result": json.loads(text) if fmt == "JSON" and text.strip() else None})
            except Exception as err:  # chdb raises RuntimeError with the server's message
                results.append({"ok": False, "error": str(err)})
        s.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
