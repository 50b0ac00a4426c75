"""`extra=DETAIL` marks a log line for the log file only: the console shows what a user acts on.

    log.info("Saved checkpoint %s", path, extra=DETAIL)

The console's filter (frcnn_pipeline/framework/console.py, named in conf/logging.yml) leaves these out;
the log file keeps every line. Records from spawned workers keep the mark on their way to the launcher.
"""

DETAIL = {"detail": True}
