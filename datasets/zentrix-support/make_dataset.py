"""Write train.jsonl and eval.jsonl of the Zentrix support dataset from its fact table.

Every fact names the knowledge-base document that states it, the key fact a correct
answer must contain, a reference answer, its train questions and its eval questions.
Eval questions are paraphrases (other words, other structure) of facts that train also
asks about, so a fine-tuned model is tested on rephrasings, not on copies; some facts
are asked in train only. The eval split also holds an "unseen" slice (``slice: unseen``): questions about
knowledge-base facts that no train line states, which only a stack that reads the knowledge base
can answer; the paraphrases are ``slice: seen``. Run: python3 datasets/zentrix-support/make_dataset.py, then
python3 datasets/zentrix-support/check.py.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (doc, key_fact, answer, [train questions], [eval questions]); an empty eval list = train only
FACTS = [
    ("01-installation.md", "/opt/zentrix", "Zentrix installs into /opt/zentrix by default.",
     ["Where does Zentrix get installed by default?"],
     ["What is the default installation directory of Zentrix?"]),
    ("01-installation.md", "zxctl bootstrap", "Run zxctl bootstrap as root to install Zentrix.",
     ["Which command installs Zentrix on a new machine?"],
     ["How do I set up Zentrix on a fresh server?"]),
    ("01-installation.md", "5.10", "Linux nodes need kernel 5.10 or newer.",
     ["What is the oldest Linux kernel Zentrix supports?"], []),
    ("01-installation.md", "FreeBSD", "Besides Linux, Zentrix supports only FreeBSD.",
     ["Which operating system other than Linux can run Zentrix?"], []),
    ("02-network-ports.md", "7443", "The gateway listens on TCP port 7443.",
     ["Which port does the Zentrix gateway listen on?", "What port do producers and consumers connect to?"],
     ["On what TCP port can clients reach the gateway?",
      "My firewall has to let message producers through; which gateway port should I open?"]),
    ("02-network-ports.md", "9181", "The admin console is served on port 9181.",
     ["What port serves the Zentrix admin console?"],
     ["To open the admin web console, which port do I use?"]),
    ("02-network-ports.md", "4717", "Cluster nodes gossip on port 4717.",
     ["Which port do Zentrix cluster nodes use for gossip?"], []),
    ("03-cli-reference.md", "--drain-timeout", "Use the --drain-timeout flag of zxctl stop.",
     ["Which zxctl flag controls how long a node drains before stopping?",
      "How do I set the drain time when stopping a node?"],
     ["How can I give a node more time to finish in-flight messages when I shut it down?"]),
    ("03-cli-reference.md", "75 seconds", "Without the flag, zxctl stop drains for 75 seconds.",
     ["How long does zxctl stop wait for in-flight messages by default?"], []),
    ("03-cli-reference.md", "--replay-from", "Pass --replay-from with an offset to zxctl consume.",
     ["Which flag replays a topic from an earlier offset?"],
     ["How do I re-read old messages starting at a given offset?"]),
    ("03-cli-reference.md", "zxctl doctor", "Run zxctl doctor to diagnose a node.",
     ["Which command runs the built-in diagnostics on a node?"], []),
    ("04-configuration.md", "/etc/zentrix/zentrix.toml", "Settings live in /etc/zentrix/zentrix.toml.",
     ["Where is the main Zentrix configuration file?"],
     ["Which file does a node read its settings from at start-up?"]),
    ("04-configuration.md", "2048", "By default queue.max_inflight is 2048.",
     ["What is the default limit of in-flight messages per queue?",
      "What is the default value of queue.max_inflight?"],
     ["By default, how many unacknowledged messages may a queue have outstanding?",
      "If I leave queue.max_inflight unset, what number applies?"]),
    ("05-limits.md", "12 MiB", "A message may be at most 12 MiB.",
     ["What is the largest message Zentrix accepts?"],
     ["How big can a single message be?"]),
    ("05-limits.md", "3500", "One tenant can own at most 3500 topics.",
     ["How many topics can one tenant create?"], []),
    ("06-retention.md", "9 days", "Messages are kept for 9 days by default.",
     ["How long does Zentrix keep messages by default?", "What is the default retention of a topic?"],
     ["If I change nothing, for how long is a message stored?"]),
    ("06-retention.md", "21 days", "The dead-letter queue keeps messages for 21 days.",
     ["How long are dead-lettered messages kept?"],
     ["What is the retention of the dead-letter queue?"]),
    ("06-retention.md", "store.keep_for", "Set store.keep_for on the topic to change retention.",
     ["Which configuration key sets a topic's retention?"], []),
    ("07-pricing.md", "Copper", "The free plan is called Copper.",
     ["What is the name of the free Zentrix plan?"], []),
    ("07-pricing.md", "Cobalt", "An expired Iridium trial falls back to Cobalt.",
     ["When an Iridium trial ends without an upgrade, which plan does the cluster move to?"], []),
    ("07-pricing.md", "$149", "Cobalt costs $149 per month.",
     ["How much does the Cobalt tier cost?", "What does a Zentrix Cobalt subscription cost?"],
     ["If we subscribe to Cobalt, what will we pay each month?",
      "How many dollars a month is the middle plan, Cobalt?"]),
    ("07-pricing.md", "$1290", "Iridium costs $1290 per month.",
     ["What does the Iridium tier cost per month?"],
     ["How expensive is the Iridium plan?"]),
    ("07-pricing.md", "17-day", "Iridium comes with a 17-day free trial.",
     ["How long is the Iridium trial?"],
     ["For how many days can I try Iridium for free?"]),
    ("08-support.md", "06:00", "Support is staffed 06:00 to 22:00 CET on weekdays.",
     ["What are the Zentrix support hours?", "When is the support desk staffed?"],
     ["At what time does the help desk open on weekdays?"]),
    ("08-support.md", "Tessera", "Open support cases in the Tessera portal.",
     ["Where do I open a support ticket?"],
     ["Which portal is used to file support cases?"]),
    ("08-support.md", "40 minutes", "A P1 case gets a first answer within 40 minutes.",
     ["How fast does support answer a P1 case?"],
     ["When production is down, how quickly should I expect a first reply from support?"]),
    ("08-support.md", "#zentrix-ops", "Free users get community help in the Matrix room #zentrix-ops.",
     ["Where do free-plan users get community help?"], []),
    ("09-error-codes.md", "ZX-4127", "ZX-4127 means the tenant exceeded a quota.",
     ["Which error code means the tenant quota is exceeded?",
      "What does a quota violation return as error code?"],
     ["What code does Zentrix return when a tenant goes over its quota?"]),
    ("09-error-codes.md", "ZX-5003", "ZX-5003 signals that the spool disk is full.",
     ["What error code signals that the spool disk is full?"],
     ["Which error do I get when the spool volume runs out of space?"]),
    ("09-error-codes.md", "ZX-2210", "ZX-2210 indicates a failed TLS handshake.",
     ["Which Zentrix error code indicates a failed TLS handshake?"],
     ["A client cannot complete the TLS negotiation; which Zentrix code appears?"]),
    ("10-releases.md", "4.8.2", "The current Zentrix release is 4.8.2.",
     ["What is the latest Zentrix release?", "Which Zentrix version should I install today?"],
     ["Which version of Zentrix is current?"]),
    ("10-releases.md", "Marlowe", "The 4.8 series is codenamed Marlowe.",
     ["What is the codename of Zentrix 4.8?"],
     ["What name was the 4.8 release series given?"]),
    ("10-releases.md", "March 2028", "Zentrix 4.6 LTS gets security fixes until March 2028.",
     ["Until when is the 4.6 LTS release supported?"],
     ["When does support for the 4.6 long-term series end?"]),
    ("11-security.md", "45 days", "Node certificates are rotated every 45 days.",
     ["At what interval does Zentrix renew its TLS node certificates?",
      "What is the lifetime of a node certificate before rotation?"],
     ["What is the certificate rotation interval?"]),
    ("11-security.md", "HMAC-SHA384", "API tokens are signed with HMAC-SHA384.",
     ["Which algorithm signs Zentrix API tokens?"],
     ["What signature scheme do Zentrix access tokens use?"]),
    ("12-monitoring.md", "9464", "Prometheus metrics are exposed on port 9464.",
     ["On which port are Prometheus metrics exposed?", "What port does the metrics endpoint use?"],
     ["Which port can Prometheus scrape for Zentrix metrics?"]),
    ("12-monitoring.md", "/zx/metrics", "Metrics are served at the path /zx/metrics.",
     ["At which HTTP path does a node publish its Prometheus metrics?"], []),
    ("13-backup.md", "zxctl snapshot", "Run zxctl snapshot to back up a running node.",
     ["Which command takes a backup of a Zentrix node?"],
     ["How do I back up a node while it keeps running?"]),
    ("13-backup.md", "5 hours", "Automatic snapshots are taken every 5 hours.",
     ["How often are automatic snapshots taken?"],
     ["What is the interval between automatic snapshots?"]),
    ("13-backup.md", "/var/lib/zentrix/snapshots", "Snapshots are stored in /var/lib/zentrix/snapshots.",
     ["Where are snapshots stored on disk?"], []),
    ("14-licensing.md", "Community License 2.1", "Zentrix is under the Zentrix Community License 2.1.",
     ["Under which licence is Zentrix distributed?"],
     ["What licence covers the Zentrix source code?"]),
    ("15-upgrades.md", "4.5", "Downgrades are supported back to version 4.5.",
     ["What is the oldest version I can downgrade to?"],
     ["How far back can a cluster be downgraded?"]),
    ("16-clustering.md", "850 ms", "A follower starts an election after 850 ms without a heartbeat.",
     ["What is the leader election timeout?",
      "After how long without a heartbeat does a follower call an election?"],
     ["How long does a node wait before starting a leader election?",
      "If the partition leader goes quiet, when do followers begin choosing a new one?"]),
    ("17-sdks.md", "zxwire", "The Python SDK is published on PyPI as zxwire.",
     ["What is the Zentrix Python client library called on PyPI?"],
     ["Which pip package do I install to use Zentrix from Python?"]),
    ("18-rate-limits.md", "1800", "A tenant may send 1800 requests per second by default.",
     ["What is the default rate limit per tenant?", "How many requests per second does a tenant get?"],
     ["What throughput does the rate limiter allow one tenant out of the box?",
      "Before any admin change, what is a tenant's request ceiling per second?"]),
    ("19-webhooks.md", "7 times", "A failed webhook delivery is retried 7 times.",
     ["How many times is a failed webhook retried?"],
     ["How often does Zentrix retry a webhook delivery that fails?"]),
    ("20-company.md", "Halvorsen Systems", "Zentrix is made by Halvorsen Systems.",
     ["Which company makes Zentrix?"],
     ["Who is the vendor behind Zentrix?"]),
    ("20-company.md", "Tromso", "Halvorsen Systems is headquartered in Tromso.",
     ["Where is Halvorsen Systems, the Zentrix vendor, headquartered?"], []),
]

# Facts the knowledge base states and the train split never does: the eval split's "unseen" slice
# (the same questions as eval/zentrix-unseen-facts.jsonl, the zentrix-regression suite's set).
# (doc, key_fact, answer, question)
UNSEEN = [
    ('01-installation.md', '2.31', 'Linux nodes need glibc 2.31.',
     'Which glibc version does a Linux node need?'),
    ('01-installation.md', 'zxsvc', 'The installer creates the unprivileged user zxsvc.',
     'What is the name of the service user the installer creates?'),
    ('01-installation.md', '5 GB', 'A node needs at least 5 GB of RAM.',
     'How much memory does a Zentrix node need at minimum?'),
    ('01-installation.md', 'zxctl join', 'Run zxctl join with a seed address.',
     'Which command adds a node to an existing cluster?'),
    ('04-configuration.md', '310 seconds', 'Idle connections stay open for 310 seconds.',
     'How long does an idle client connection stay open by default?'),
    ('04-configuration.md', '/var/spool/zentrix', 'The default spool directory is /var/spool/zentrix.',
     'Where does the spool keep messages on disk by default?'),
    ('05-limits.md', '96', 'A consumer group accepts at most 96 consumers.',
     'How many consumers can one consumer group have?'),
    ('05-limits.md', '64 headers', 'A message carries at most 64 headers.',
     'How many headers can a single message carry?'),
    ('07-pricing.md', '12 nodes', 'Cobalt allows up to 12 nodes.',
     'How many nodes does the Cobalt plan allow?'),
    ('08-support.md', '4 business hours', 'A P2 case gets a first answer within 4 business hours.',
     'How quickly is a P2 case answered?'),
    ('09-error-codes.md', 'ZX-4401', 'That is error ZX-4401.',
     'Which error code means the access token is missing or expired?'),
    ('10-releases.md', '16 weeks', 'A new minor series ships every 16 weeks.',
     'How often does a new minor series of Zentrix ship?'),
    ('10-releases.md', 'Skerrymore', 'The 4.9 series will be codenamed Skerrymore.',
     'What will the Zentrix 4.9 series be called?'),
    ('11-security.md', 'zxctl keys rotate', 'Run zxctl keys rotate.',
     'Which command rotates the token signing key?'),
    ('12-monitoring.md', '/zx/ready', 'Use /zx/ready on the metrics port.',
     'Which path should a load balancer use for health checks?'),
    ('13-backup.md', 'zstd', 'Snapshots are compressed with zstd.',
     'Which compression is used for snapshots?'),
    ('15-upgrades.md', 'zxctl upgrade --rolling', 'Run zxctl upgrade --rolling.',
     'Which command upgrades a cluster one node at a time?'),
    ('16-clustering.md', '150 ms', 'Leaders send heartbeats every 150 ms.',
     'How often does a partition leader send heartbeats?'),
    ('18-rate-limits.md', '340', 'It allows a burst of 340 requests.',
     'How large a burst above the rate limit does the token bucket allow?'),
    ('19-webhooks.md', 'X-Zentrix-Sig', 'The X-Zentrix-Sig header holds the HMAC.',
     'Which header carries the signature of a webhook delivery?'),
    ('20-company.md', 'Northlight Summit', 'It is called Northlight Summit.',
     'What is the name of the Zentrix user conference?'),
    ('20-company.md', '2019', 'Halvorsen Systems was founded in 2019.',
     'In which year was Halvorsen Systems founded?'),
]


def rows(split: str) -> list[dict]:
    """A split's rows; eval rows carry ``slice``: ``seen`` (a train fact in other words) or ``unseen``."""
    out = []
    for doc, fact, answer, train_qs, eval_qs in FACTS:
        for question in train_qs if split == "train" else eval_qs:
            out.append({"question": question, "answer": answer, "key_fact": fact, "doc": doc,
                        **({"slice": "seen"} if split == "eval" else {})})
    if split == "eval":
        out += [{"question": q, "answer": a, "key_fact": f, "doc": d, "slice": "unseen"} for d, f, a, q in UNSEEN]
    return [{"id": f"{split}-{n:03d}", **row} for n, row in enumerate(out, start=1)]


def main() -> None:
    for split in ("train", "eval"):
        lines = [json.dumps(r, ensure_ascii=True) for r in rows(split)]
        (HERE / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{split}: {len(lines)} questions")


if __name__ == "__main__":
    main()
