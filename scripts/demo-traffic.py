#!/usr/bin/env python3
"""The demo's traffic: clients of the InferenceServices in namespace lexserve-live, run by
scripts/demo.sh until it has what it waits for (a shadow's verdict, an experiment's).

  demo-traffic.py embed URL SENTENCES
      two clients embedding the sentences of SENTENCES (label<TAB>text) through URL, in turn,
      each about 20 a second, for as long as it runs (what production's users send; the
      shadow gets a copy).

  demo-traffic.py users URL SENTENCES TALLY
      simulated users of a sentiment feature behind an experiment: user N sends one sentence
      of SENTENCES through URL with header x-user-id: user-N, and accepts the answer when it
      is the sentence's label, which it reports to the router (POST /outcome, metric
      "accepted"). Every second TALLY gets the users and acceptances by variant (JSON).
"""

import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request


def post(url, body, headers=None):
    request = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers, json.load(answer)


def sentences(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]


def embed(url, rows):
    def client(offset):
        i = offset
        while True:
            try:
                post(f"{url}/embed", {"texts": [rows[i % len(rows)][1]]})
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)  # a replica going away, or a 429: try again, as a client would
            i += 1
            time.sleep(0.05)

    for offset in range(2):
        threading.Thread(target=client, args=(offset * 7,), daemon=True).start()
    while True:
        time.sleep(3600)


def users(url, rows, tally_path):
    tally = {}
    lock = threading.Lock()
    next_user = iter(range(10**9))

    def user_loop(seed):
        pick = random.Random(seed)
        while True:
            with lock:
                user = f"user-{next(next_user)}"
            label, text = pick.choice(rows)
            try:
                headers, answer = post(f"{url}/predict", {"texts": [text]}, {"x-user-id": user})
                variant = headers.get("x-lexserve-variant", "none")
                accepted = 1.0 if answer["predictions"][0] == label else 0.0
                post(f"{url}/outcome", {"key": user, "metric": "accepted", "value": accepted})
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                time.sleep(0.2)  # the Service moving to the router: this user comes back later
                continue
            with lock:
                counts = tally.setdefault(variant, {"users": 0, "accepted": 0})
                counts["users"] += 1
                counts["accepted"] += int(accepted)

    for seed in range(6):
        threading.Thread(target=user_loop, args=(seed,), daemon=True).start()
    while True:
        time.sleep(1)
        with lock:
            text = json.dumps(tally, sort_keys=True)
        with open(tally_path + ".tmp", "w") as f:
            f.write(text)
        os.replace(tally_path + ".tmp", tally_path)


def main():
    mode, url, path = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = sentences(path)
    if mode == "embed":
        embed(url, rows)
    elif mode == "users":
        users(url, rows, sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode!r}: embed or users")


if __name__ == "__main__":
    main()
