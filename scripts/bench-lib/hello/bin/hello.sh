#!/bin/sh
# The benchmark's extension handler (scripts/bench zips this directory and
# fabric-sim serves it): every command succeeds at once; enable writes a
# success status for its sequence number, as a real handler does.
cd "$(dirname "$0")/.." || exit 1
if [ "$1" = enable ]; then
    seq=${ConfigSequenceNumber:-0}
    mkdir -p status
    printf '[{"version":1.0,"timestampUTC":"%s","status":{"name":"Hello","operation":"Enable","status":"success","code":0,"formattedMessage":{"lang":"en-US","message":"hello %s"}}}]\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$seq" >"status/$seq.status.tmp"
    mv "status/$seq.status.tmp" "status/$seq.status"
fi
exit 0
