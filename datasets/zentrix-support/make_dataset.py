"""Write train.jsonl and eval.jsonl of the Zentrix support dataset from its fact table.

Every fact names the knowledge-base document that states it, the key fact a correct
answer must contain, a reference answer, the train questions and the eval questions.
Eval questions are paraphrases (other words, other structure) of facts that train
also asks about, so a fine-tuned model is tested on rephrasings, not on copies; five
facts are asked only in train. Run: python datasets/zentrix-support/make_dataset.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (doc, key_fact, answer, [train questions], [eval questions])
FACTS = [
    ("01-installation.md", "/opt/zentrix", "Zentrix installs into /opt/zentrix by default.",
     ["Where does Zentrix get installed by default?"], ["What is the default installation directory of Zentrix?"]),
    ("01-installation.md", "zxctl bootstrap", "Run zxctl bootstrap as root to install Zentrix.",
     ["Which command installs Zentrix on a new machine?"], ["How do I set up Zentrix on a fresh server?"]),
    ("01-installation.md", "6 GB", "A Zentrix node needs at least 6 GB of RAM.",
     ["How much memory does Zentrix require at minimum?"], ["What is the minimum RAM for running a node?"]),
    ("02-network-ports.md", "7443", "The gateway listens on TCP port 7443.",
     ["Which port does the Zentrix gateway listen on?", "What port do producers and consumers connect to?"],
     ["On what TCP port can clients reach the gateway?"]),
    ("02-network-ports.md", "9181", "The admin console is served on port 9181.",
     ["What port serves the Zentrix admin console?"], ["To open the admin web console, which port do I use?"]),
    ("02-network-ports.md", "4717", "Cluster nodes gossip on port 4717.",
     ["Which port do Zentrix cluster nodes use for gossip?"],
     ["What port must be open between cluster members for their gossip protocol?"]),
    ("03-cli-reference.md", "--drain-timeout", "Use the --drain-timeout flag of zxctl stop.",
     ["Which zxctl flag controls how long a node drains before stopping?", "How do I set the drain time when stopping a node?"],
     ["How can I give a node more time to finish in-flight messages when I shut it down?"]),
    ("03-cli-reference.md", "--replay-from", "Pass --replay-from with an offset to zxctl consume.",
     ["Which flag replays a topic from an earlier offset?"], ["How do I re-read old messages starting at a given offset?"]),
    ("03-cli-reference.md", "zxctl doctor", "Run zxctl doctor to diagnose a node.",
     ["Which command checks a Zentrix node for problems?", "What runs the built-in diagnostics?"],
     ["Is there a command to troubleshoot a misbehaving node?"]),
    ("04-configuration.md", "/etc/zentrix/zentrix.toml", "The configuration file is /etc/zentrix/zentrix.toml.",
     ["Where is the main Zentrix configuration file?"], ["Which file holds a node's settings?"]),
    ("04-configuration.md", "2048", "By default queue.max_inflight is 2048.",
     ["What is the default limit of in-flight messages per queue?", "What is the default value of queue.max_inflight?"],
     ["By default, how many unacknowledged messages may a queue have in flight?"]),
    ("05-limits.md", "12 MiB", "A message may be at most 12 MiB.",
     ["What is the largest message Zentrix accepts?", "What is the maximum message size?"],
     ["How big can a single message be?"]),
    ("05-limits.md", "4000", "One tenant can create at most 4000 topics.",
     ["How many topics can one tenant create?"], ["What is the per-tenant limit on topics?"]),
    ("05-limits.md", "256", "A consumer group accepts at most 256 consumers.",
     ["What is the maximum number of consumers in a consumer group?"], ["How many consumers can join one group at most?"]),
    ("06-retention.md", "9 days", "Messages are kept for 9 days by default.",
     ["How long does Zentrix keep messages by default?", "What is the default value of retention.period?"],
     ["What is the default message retention period?"]),
    ("06-retention.md", "21 days", "The dead-letter queue keeps messages for 21 days.",
     ["How long are dead-lettered messages kept?"], ["What is the retention of the dead-letter queue?"]),
    ("07-pricing.md", "Copper", "The free plan is called Copper.",
     ["What is the name of the free Zentrix plan?"], ["Which Zentrix tier costs nothing?"]),
    ("07-pricing.md", "$149", "Cobalt costs $149 per month.",
     ["How much does the Cobalt tier cost?", "What is the price of Cobalt?"],
     ["What is the monthly price of a Cobalt subscription?"]),
    ("07-pricing.md", "$1290", "Iridium costs $1290 per month.",
     ["What does the Iridium tier cost per month?"], ["How expensive is the Iridium plan?"]),
    ("07-pricing.md", "17-day", "Iridium has a 17-day free trial.",
     ["How long is the Iridium trial?"], ["For how many days can I try Iridium for free?"]),
    ("08-support.md", "06:00", "Support is open 06:00 to 22:00 CET on weekdays.",
     ["What are the Zentrix support hours?", "When is the support desk staffed?"],
     ["When can I reach Zentrix support during the week?"]),
    ("08-support.md", "Tessera", "Open support cases in the Tessera portal.",
     ["Where do I open a support ticket?"], ["Which portal is used to file support cases?"]),
    ("09-error-codes.md", "ZX-4127", "ZX-4127 means the tenant quota was exceeded.",
     ["Which error code means the tenant quota is exceeded?", "What does a quota violation return as error code?"],
     ["What code does Zentrix return when a tenant goes over its quota?"]),
    ("09-error-codes.md", "ZX-5003", "ZX-5003 signals that the spool disk is full.",
     ["What error code signals that the spool disk is full?"], ["Which error do I get when the spool volume runs out of space?"]),
    ("09-error-codes.md", "ZX-2210", "ZX-2210 indicates a failed TLS handshake.",
     ["Which error code indicates a failed TLS handshake?"],
     ["A client cannot complete the TLS handshake; which Zentrix error code appears?"]),
    ("10-releases.md", "4.8.2", "The current Zentrix release is 4.8.2.",
     ["What is the latest Zentrix release?", "Which Zentrix version should I install today?"],
     ["Which version of Zentrix is current?"]),
    ("10-releases.md", "Marlowe", "The 4.8 series is codenamed Marlowe.",
     ["What is the codename of Zentrix 4.8?"], ["What name was the 4.8 release given?"]),
    ("10-releases.md", "March 2028", "Zentrix 4.6 LTS is supported until March 2028.",
     ["Until when is the 4.6 LTS release supported?"], ["When does support for the 4.6 long-term release end?"]),
    ("11-security.md", "45 days", "Certificates are rotated every 45 days.",
     ["How often are Zentrix TLS certificates rotated?", "What is the node certificate lifetime before rotation?"],
     ["What is the certificate rotation interval?"]),
    ("11-security.md", "HMAC-SHA384", "API tokens are signed with HMAC-SHA384.",
     ["Which algorithm signs Zentrix API tokens?"], ["What signature scheme do Zentrix access tokens use?"]),
    ("12-monitoring.md", "9464", "Prometheus metrics are exposed on port 9464.",
     ["On which port are Prometheus metrics exposed?", "What port does the metrics endpoint use?"],
     ["Which port can Prometheus scrape for Zentrix metrics?"]),
    ("12-monitoring.md", "ndjson", "Logs are written as ndjson.",
     ["What format are Zentrix logs written in?"], ["In which format does Zentrix emit its logs?"]),
    ("13-backup.md", "zxctl snapshot", "Run zxctl snapshot to back up a node.",
     ["Which command takes a backup of a Zentrix node?"], ["How do I create a snapshot of a node's data?"]),
    ("13-backup.md", "6 hours", "Automatic snapshots are taken every 6 hours.",
     ["How often are automatic snapshots taken?"], ["What is the default interval between automatic snapshots?"]),
    ("14-licensing.md", "Community License 2.1", "Zentrix is under the Zentrix Community License 2.1.",
     ["Under which licence is Zentrix distributed?"], ["What licence covers the Zentrix source code?"]),
    ("16-clustering.md", "850 ms", "A follower starts an election after 850 ms without the leader.",
     ["What is the leader election timeout?", "After how long without a heartbeat does a follower call an election?"],
     ["How long does a node wait before starting a leader election?"]),
    ("20-company.md", "Halvorsen Systems", "Zentrix is made by Halvorsen Systems.",
     ["Which company makes Zentrix?"], ["Who is the vendor behind Zentrix?"]),
    ("17-sdks.md", "zentrix-py", "The Python SDK is published as zentrix-py.",
     ["What is the name of the Python SDK package?", "What is the PyPI name of the Zentrix Python client?"],
     ["Which pip package do I install to use Zentrix from Python?"]),
    ("18-rate-limits.md", "1800", "A tenant may send 1800 requests per second by default.",
     ["What is the default rate limit per tenant?", "How many requests per second does a tenant get?"],
     ["How many requests per second may a tenant send by default?"]),
    ("19-webhooks.md", "7 times", "A failed webhook is retried 7 times.",
     ["How many times is a failed webhook retried?"], ["How often does Zentrix retry a webhook delivery that fails?"]),
    # asked in train only
    ("20-company.md", "Tromso", "Halvorsen Systems is headquartered in Tromso.",
     ["Where is Halvorsen Systems headquartered?"], []),
    ("18-rate-limits.md", "300", "The rate limiter allows a burst of 300 requests.",
     ["What burst size does the rate limiter allow?"], []),
    ("19-webhooks.md", "90 seconds", "The backoff between webhook retries never exceeds 90 seconds.",
     ["What is the maximum backoff between webhook retries?"], []),
    ("15-upgrades.md", "4.5", "Downgrades are supported back to version 4.5.",
     ["What is the oldest version I can downgrade to?"], []),
    ("13-backup.md", "/var/lib/zentrix/snapshots", "Snapshots are stored in /var/lib/zentrix/snapshots.",
     ["Where are snapshots stored?"], []),
]


def rows(split: str) -> list[dict]:
    out = []
    for doc, fact, answer, train_qs, eval_qs in FACTS:
        for question in train_qs if split == "train" else eval_qs:
            out.append({"question": question, "answer": answer, "key_fact": fact, "doc": doc})
    for n, row in enumerate(out, start=1):
        row["id"] = f"{split}-{n:03d}"
    return [{"id": r["id"], **{k: v for k, v in r.items() if k != "id"}} for r in out]


def main() -> None:
    for split in ("train", "eval"):
        lines = [json.dumps(r, ensure_ascii=True) for r in rows(split)]
        (HERE / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{split}: {len(lines)} questions")


if __name__ == "__main__":
    main()
