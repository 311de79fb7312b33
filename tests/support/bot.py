"""A bot's event writer, as the tests need it: Python's own logging handlers.

usage: bot.py PATH HANDLER FIRST COUNT [MAX_BYTES] [RATE]
  HANDLER: rotating (RotatingFileHandler, keeping 1,000 backups: more
           than any test writes, so nothing is deleted), rotating20 (the
           same, keeping 20), rotating5000 (keeping 5,000, for thousands of
           rotated files renamed at each rollover), timed (TimedRotatingFileHandler,
           every second), watched (WatchedFileHandler, for logrotate create),
           plain (FileHandler, for logrotate copytruncate)
  FIRST, COUNT: the events' sequence numbers (unique per event, in `ts`)
  MAX_BYTES: rotation size for `rotating` (default 65536)
  RATE: events per second, 0 for as fast as possible (default 0)
"""
import json
import logging
import logging.handlers
import sys
import time

path, kind, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
max_bytes = int(sys.argv[5]) if len(sys.argv) > 5 else 65536
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0

# A rollover looks for every backup it keeps, one stat() each, whether or
# not it exists: 100,000 backups cost 0.3 s per rollover, a third of the
# writer's time at 2 MiB files, and kept it well below the bot's pace.
backups = {"rotating": 1000, "rotating20": 20, "rotating5000": 5000}
if kind in backups:
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups[kind])
elif kind == "timed":
    handler = logging.handlers.TimedRotatingFileHandler(path, when="S", interval=1, backupCount=100000)
elif kind == "watched":
    handler = logging.handlers.WatchedFileHandler(path)
elif kind == "plain":
    handler = logging.FileHandler(path)
else:
    sys.exit(f"unknown handler {kind}")
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("events")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

start = time.monotonic()
for i in range(count):
    seq = first + i
    event = {
        "ts": "2026-11-22T10:00:00.%06d+00:00" % seq,
        "event": "interaction" if seq % 3 == 0 else "app_command",
        "guild_id": str(seq % 7),
        "type": "application_command",
    }
    if seq % 3:
        event["command"] = "cmd%d" % (seq % 5)
        event["duration_ms"] = seq % 100 + 0.5
    log.info(json.dumps(event))
    if rate > 0:
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
handler.close()
elapsed = time.monotonic() - start
print("wrote %d events in %.2f s (%.0f events/s)" % (count, elapsed, count / max(elapsed, 1e-9)), flush=True)
