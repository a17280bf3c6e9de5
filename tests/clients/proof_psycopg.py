# A psycopg 3 client for the zero-downtime proof: server-side prepared
# upserts and reads of its own ids through the proxy until stdin closes.
# A lost connection (an injected fault) means reconnect; any other error,
# or a read that differs from what it wrote, exits non-zero.
# Usage: python proof_psycopg.py PORT BASE
import random
import sys
import threading
import time

import psycopg

port, base = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
rng = random.Random(base)
ops = reconnects = 0
conn = None
while not stop.is_set():
    try:
        if conn is None:
            conn = psycopg.connect(host="127.0.0.1", port=port, user="trust_user",
                                   dbname="postgres", sslmode="disable", autocommit=True,
                                   prepare_threshold=0)
        while not stop.is_set():
            item, qty = base + rng.randrange(200), rng.randrange(1_000_000)
            conn.execute("INSERT INTO items (id, qty, note) VALUES (%s, %s, 'py') "
                         "ON CONFLICT (id) DO UPDATE SET qty = excluded.qty", (item, qty), prepare=True)
            got = conn.execute("SELECT qty FROM items WHERE id = %s", (item,), prepare=True).fetchone()
            if got is None or got[0] != qty:
                print(f"MISMATCH {item}: wrote {qty}, read {got}", flush=True)
                sys.exit(2)
            ops += 1
    except psycopg.Error as e:
        state = getattr(e, "sqlstate", None) or ""
        if isinstance(e, psycopg.OperationalError) or state.startswith(("08", "57P")):
            reconnects += 1
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.05)
            continue
        print(f"ERROR {state} {e}", flush=True)
        sys.exit(1)
print(f"ok {ops} {reconnects}", flush=True)
