#!/usr/bin/env python3
"""The official Python SDK as a user would drive it in bulk: the peer of `cargo bench --bench
pipeline noise|overload`.

    python3 benches/sdk_peer.py BINARY DEVICES [SIMULATOR FLAGS...]

Starts `BINARY simulate` with lognormal 80 ms latency and the given flags (for example
`--fault-system-overflow 0.02` or `--account-qps 200`), then registers DEVICES ClientIds with
alibabacloud-onsmqtt20200420 from a pool of 64 threads, paced at 294 calls/s (the per-IP limit
less 2 %), retrying the throttle codes after 100 ms, as a careful user would write it. Prints one
Markdown row: devices/s, calls, throttled share.
"""
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from alibabacloud_onsmqtt20200420 import models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi import models as open_api_models

AK, SECRET, INSTANCE = "BENCHAK", "bench-secret", "post-cn-bench0001"
THROTTLE_CODES = ("Throttling", "SystemOverFlow", "ServiceUnavailable", "ApplyTokenOverFlow")
PACE = 294.0
THREADS = 64


class Pacer:
    """One call every 1/PACE s across all threads."""

    def __init__(self, rate):
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self):
        with self.lock:
            now = time.monotonic()
            at = max(self.next, now)
            self.next = at + self.interval
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main():
    binary, devices, sim_flags = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    sim = subprocess.Popen(
        [binary, "simulate", "--listen", "127.0.0.1:0", "--instance-id", INSTANCE,
         "--access-key", f"{AK}:{SECRET}", "--latency", "lognormal:80:0.5", *sim_flags],
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(sim.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        local = threading.local()
        pacer = Pacer(PACE)
        counts = {"calls": 0, "throttled": 0, "failed": 0}
        failures = {}
        lock = threading.Lock()

        def client():
            if not hasattr(local, "client"):
                local.client = Client(open_api_models.Config(
                    access_key_id=AK, access_key_secret=SECRET, endpoint=f"127.0.0.1:{port}",
                    protocol="http", region_id="cn-hangzhou"))
            return local.client

        def register(i):
            request = models.RegisterDeviceCredentialRequest(
                client_id=f"GID_peer@@@d-{i:08}", instance_id=INSTANCE)
            while True:
                pacer.wait()
                with lock:
                    counts["calls"] += 1
                try:
                    client().register_device_credential(request)
                    return
                except Exception as e:  # the SDK raises TeaException with .code
                    code = getattr(e, "code", "") or ""
                    if code.startswith(THROTTLE_CODES):
                        with lock:
                            counts["throttled"] += 1
                        time.sleep(0.1)
                        continue
                    with lock:
                        counts["failed"] += 1
                        failures[code or type(e).__name__] = failures.get(code or type(e).__name__, 0) + 1
                    return

        started = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(register, range(devices)))
        wall = time.monotonic() - started
        print(f"| sdk peer | {devices} devices, simulator {' '.join(sim_flags) or 'defaults'} | "
              f"{devices / wall:.1f} devices/s | | throttled {counts['throttled']} of "
              f"{counts['calls']} calls = {100 * counts['throttled'] / max(counts['calls'], 1):.2f} %,"
              f" failed {counts['failed']} {failures or ''} | | wall {wall:.1f} s |")
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
