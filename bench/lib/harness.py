#!/usr/bin/env python3
"""Helpers for bench/run.sh (python3 standard library only).

Subcommands:
  render TEMPLATE OUT KEY=VALUE... [--extra NAME=FILE]...
      Fill a config template's @KEY@ placeholders; fail on any left unfilled.
  routes COUNT OUT_DIR
      Write the scenario-8 filler routes for every proxy (COUNT routes over
      100 hosts): nginx-extra.conf, haproxy-extra.cfg, routes-exact.map,
      routes-prefix.map, portcullis-extra.yaml.
  jwt OUT_DIR COUNT
      Scenario 9's credentials, made with openssl: an RSA 2048 key
      (jwt-key.pem), its public half as a JSON Web Key Set (jwks.json, kid
      "bench"), COUNT RS256 tokens for users user-1..user-COUNT (tokens.txt,
      one a line) and one token without the required scope
      (token-no-scope.txt).
  cpu PID...
      Print user+system CPU ticks of these processes and all their
      descendants (/proc/PID/stat utime+stime; threads are included).
  rss PID...
      Print the resident memory (VmRSS, KiB) of these processes and all
      their descendants.
  threads PID
      Print the thread names of one process, one per line.
  ticks PID
      Print "BUSY OURS TOTAL": the machine's busy and total CPU ticks
      (/proc/stat, busy = user + nice + system + steal) and the ticks spent by
      PID and its descendants, reaped children included. Two readings give
      the CPU share other work took in between (see "foreign").
  foreign BEFORE AFTER
      From two "ticks" readings, print the percentage of all CPU time spent
      by processes other than ours.
  quiet MAX_WAIT
      Wait until the CPUs are at most 10% busy over half a second (nothing of
      the harness runs then, so what is busy is foreign), at most MAX_WAIT
      seconds; print the busy share (percent) last seen.
  record --out FILE --scenario S --target T --run N --tool TOOL --output FILE
         [--cpu-before TICKS --cpu-after TICKS] [--h2load-log FILE] [--set K=V]...
      Parse one load-generator run, add the CPU figures, append a JSON line.
"""

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- templates


def render(args):
    template, out, *rest = args
    values = {}
    extras = {}
    i = 0
    while i < len(rest):
        if rest[i] == "--extra":
            name, path = rest[i + 1].split("=", 1)
            with open(path) as f:
                extras[name] = f.read()
            i += 2
            continue
        key, value = rest[i].split("=", 1)
        values[key] = value
        i += 1
    with open(template) as f:
        text = f.read()
    for name in re.findall(r"@(EXTRA_[A-Z_]+)@", text):
        text = text.replace(f"@{name}@", extras.get(name, ""))
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@([A-Z_]+)@", text)))
    if left:
        sys.exit(f"render: {template}: unfilled placeholders: {', '.join(left)}")
    with open(out, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- routes

HOSTS = 100


def filler_routes(count):
    """(index, host, kind, path): the same mix as benches/route_match.rs.

    Route i belongs to host svc{i % 100}.example.com and path number i // 100;
    hosts whose number is a multiple of 4 get exact /pN/health routes, the
    others segment prefixes /pN/api.
    """
    for i in range(count):
        host = f"svc{i % HOSTS}.example.com"
        n = i // HOSTS
        if i % 4 == 0:
            yield i, host, "exact", f"/p{n}/health"
        else:
            yield i, host, "prefix", f"/p{n}/api"


def routes(args):
    count, out_dir = int(args[0]), args[1]
    by_host = {}
    for i, host, kind, path in filler_routes(count):
        by_host.setdefault(host, []).append((i, kind, path))

    # nginx: one server block per host, one location per route.
    lines = []
    for host, rs in by_host.items():
        lines.append("    server {")
        lines.append("        listen 127.0.0.1:@HTTP_PORT@;")
        lines.append(f"        server_name {host};")
        for _, kind, path in rs:
            op = "= " if kind == "exact" else ""
            lines.append(f"        location {op}{path} {{ proxy_pass http://app; }}")
        lines.append("    }")
    with open(os.path.join(out_dir, "nginx-extra.conf"), "w") as f:
        f.write("\n".join(lines) + "\n")

    # HAProxy: maps keyed by host + path ("base"), exact (tree) then prefix.
    with open(os.path.join(out_dir, "routes-exact.map"), "w") as f:
        for _, host, kind, path in filler_routes(count):
            if kind == "exact":
                f.write(f"{host}{path} app\n")
    with open(os.path.join(out_dir, "routes-prefix.map"), "w") as f:
        for _, host, kind, path in filler_routes(count):
            if kind == "prefix":
                f.write(f"{host}{path} app\n")
    exact = os.path.join(out_dir, "routes-exact.map")
    prefix = os.path.join(out_dir, "routes-prefix.map")
    with open(os.path.join(out_dir, "haproxy-extra.cfg"), "w") as f:
        f.write(
            f"    http-request set-var(txn.route) base,map_str({exact})\n"
            f"    http-request set-var(txn.route) base,map_beg({prefix}) "
            "unless { var(txn.route) -m found }\n"
            "    use_backend %[var(txn.route)] if { var(txn.route) -m found }\n"
        )

    # portcullis: one route per entry.
    with open(os.path.join(out_dir, "portcullis-extra.yaml"), "w") as f:
        for i, host, kind, path in filler_routes(count):
            key = "path" if kind == "exact" else "path_prefix"
            f.write(
                f"  - name: r{i}\n"
                f"    match: {{ hosts: [{host}], {key}: {path} }}\n"
                "    upstream: app\n"
            )


# ---------------------------------------------------------------- JWT

# What bench/portcullis-gateway.yaml's "auth" policy accepts.
JWT_ISSUER = "https://idp.example.com"
JWT_AUDIENCE = "orders-api"
JWT_SCOPE = "users:read"


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def _b64json(obj):
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _sign(key, claims):
    header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    sig = _openssl("dgst", "-sha256", "-sign", key, data=signing_input.encode())
    return f"{signing_input}.{_b64url(sig)}"


def jwt(args):
    out_dir, count = args[0], int(args[1])
    key = os.path.join(out_dir, "jwt-key.pem")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
    modulus = _openssl("rsa", "-in", key, "-noout", "-modulus").decode().strip()
    n = bytes.fromhex(modulus.split("=", 1)[1])
    text = _openssl("rsa", "-in", key, "-noout", "-text").decode()
    e = int(re.search(r"publicExponent: (\d+)", text).group(1))
    jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
           "n": _b64url(n), "e": _b64url(e.to_bytes((e.bit_length() + 7) // 8, "big"))}
    with open(os.path.join(out_dir, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f, indent=2)
    now = int(time.time())
    base = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "iat": now, "exp": now + 86400}
    with open(os.path.join(out_dir, "tokens.txt"), "w") as f:
        for i in range(1, count + 1):
            f.write(_sign(key, {**base, "sub": f"user-{i}", "scope": JWT_SCOPE}) + "\n")
    # Valid in every way but the scope: portcullis must answer 403.
    with open(os.path.join(out_dir, "token-no-scope.txt"), "w") as f:
        f.write(_sign(key, {**base, "sub": "user-0", "scope": "users:write"}) + "\n")


def passwords(args):
    """basic.txt (base64 of `user:password`, one a line) and
    basic-consumers.yaml (the consumers with argon2id hashes made by
    `PORTCULLIS hash-password`) for scenario 10."""
    out_dir, count, portcullis = args[0], int(args[1]), args[2]
    lines = ["consumers:"]
    with open(os.path.join(out_dir, "basic.txt"), "w") as f:
        for i in range(1, count + 1):
            user, password = f"user-{i}", f"bench-password-{i:04d}-{os.urandom(8).hex()}"
            f.write(base64.b64encode(f"{user}:{password}".encode()).decode() + "\n")
            digest = subprocess.run([portcullis, "hash-password"], input=password + "\n",
                                    capture_output=True, text=True, check=True).stdout.strip()
            lines.append(f"  - {{ name: {user}, groups: [bench], password_hash: \"{digest}\" }}")
    with open(os.path.join(out_dir, "basic-consumers.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def apikeys(args):
    """keys.txt (one API key a line) and consumers.yaml (the `consumers`
    section holding their SHA-256 digests) for scenario 10."""
    out_dir, count = args[0], int(args[1])
    lines = ["consumers:"]
    with open(os.path.join(out_dir, "keys.txt"), "w") as f:
        for i in range(1, count + 1):
            key = f"bench-key-{i:04d}-{os.urandom(8).hex()}"
            f.write(key + "\n")
            digest = hashlib.sha256(key.encode()).hexdigest()
            lines.append(f"  - {{ name: user-{i}, groups: [bench], api_keys: [\"{digest}\"] }}")
    with open(os.path.join(out_dir, "consumers.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- /proc


def _stat(pid):
    """(ppid, utime+stime) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields follow the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _tree(pids):
    """The given pids plus all their descendants."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(name)
            if st:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [int(p) for p in pids]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _own_ticks(pid):
    """utime + stime + cutime + cstime of one process, or 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(")") + 2 :].split()
    return sum(int(x) for x in fields[11:15])


def ticks(args):
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[7]  # user, nice, system, steal
    total = sum(v[:8])
    ours = sum(_own_ticks(p) for p in _tree(args))
    print(busy, ours, total)


def foreign(args):
    b0, o0, t0 = (int(x) for x in args[0].split())
    b1, o1, t1 = (int(x) for x in args[1].split())
    share = 100 * max(0, (b1 - b0) - (o1 - o0)) / max(1, t1 - t0)
    print(f"{share:.0f}")


def cpu(args):
    total = 0
    for pid in _tree(args):
        st = _stat(pid)
        if st:
            total += st[1]
    print(total)


def rss(args):
    total = 0
    for pid in _tree(args):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    print(total)


def threads(args):
    pid = args[0]
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            print(f.read().strip())


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]), idle


def quiet(args):
    import time

    deadline = time.monotonic() + float(args[0])
    waited = False
    while True:
        t0, i0 = _cpu_times()
        time.sleep(0.5)
        t1, i1 = _cpu_times()
        busy = 100 * (1 - (i1 - i0) / max(1, t1 - t0))
        if busy <= 10 or time.monotonic() >= deadline:
            break
        if not waited:
            print(f"  (waiting for a quiet machine: {busy:.0f}% busy)", file=sys.stderr)
            waited = True
    print(f"{busy:.0f}")


# ---------------------------------------------------------------- parsing


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def parse_wrk(text):
    m = re.search(r"^WRK_JSON (\{.*\})$", text, re.M)
    if not m:
        raise ValueError("no WRK_JSON line in wrk output")
    j = json.loads(m.group(1))
    secs = j["duration_us"] / 1e6
    lat = j["latency_us"]
    errors = sum(j["errors"].values())
    return {
        "requests": j["requests"],
        "seconds": secs,
        "rps": j["requests"] / secs,
        "bytes": j["bytes"],
        "mb_s": j["bytes"] / secs / 1e6,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "errors": errors,
        "error_detail": j["errors"],
    }


def _size(text):
    m = re.match(r"([\d.]+)([KMG]?)B", text)
    mult = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    return float(m.group(1)) * mult


def parse_h2load(text, log_path):
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s, ([\d.]+[KMG]?B)/s", text)
    if not m:
        raise ValueError("no 'finished in' line in h2load output")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    succeeded, failed, errored, timeout = (int(r.group(i)) for i in (4, 5, 6, 7))
    t = re.search(r"traffic: ([\d.]+[KMG]?B) \((\d+)\) total", text)
    total_bytes = int(t.group(2)) if t else 0
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    non2xx = sum(int(s.group(i)) for i in (2, 3, 4)) if s else 0
    lat = []
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    lat.sort()

    def ms(p):
        v = percentile(lat, p)
        return None if v is None else v / 1000

    return {
        "requests": succeeded,
        "seconds": secs,
        "rps": succeeded / secs if secs else 0,
        "bytes": total_bytes,
        "mb_s": total_bytes / secs / 1e6 if secs else 0,
        "p50_ms": ms(50),
        "p90_ms": ms(90),
        "p99_ms": ms(99),
        "p999_ms": ms(99.9),
        "errors": failed + errored + timeout + non2xx,
    }


def parse_oha(text):
    start = text.index("{")
    j = json.loads(text[start:])
    summary = j["summary"]
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    # Requests still in flight when the duration ends are cut off, not failed.
    errors = sum(
        v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k
    ) + bad
    secs = summary["total"]

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1000

    return {
        "requests": ok,
        "seconds": secs,
        "rps": ok / secs if secs else 0,
        "bytes": summary.get("sizePerSec", 0) * secs,
        "mb_s": summary.get("sizePerSec", 0) / 1e6,
        "p50_ms": ms("p50"),
        "p90_ms": ms("p90"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "errors": errors,
    }


def record(args):
    opts = {"set": []}
    i = 0
    while i < len(args):
        key = args[i].lstrip("-").replace("-", "_")
        if key == "set":
            opts["set"].append(args[i + 1])
        else:
            opts[key] = args[i + 1]
        i += 2
    with open(opts["output"]) as f:
        text = f.read()
    tool = opts["tool"]
    if tool == "wrk":
        rec = parse_wrk(text)
    elif tool == "h2load":
        rec = parse_h2load(text, opts.get("h2load_log"))
    elif tool == "oha":
        rec = parse_oha(text)
    elif tool == "none":
        rec = {}
    else:
        sys.exit(f"record: unknown tool {tool}")
    rec = {
        "scenario": opts["scenario"],
        "target": opts["target"],
        "run": int(opts["run"]),
        "tool": tool,
        **rec,
    }
    for kv in opts["set"]:
        k, v = kv.split("=", 1)
        try:
            v = json.loads(v)
        except ValueError:
            pass
        rec[k] = v
    if "cpu_before" in opts:
        ticks = int(opts["cpu_after"]) - int(opts["cpu_before"])
        rec["cpu_s"] = ticks / CLK_TCK
        if rec.get("requests"):
            rec["cpu_us_per_req"] = rec["cpu_s"] / rec["requests"] * 1e6
    with open(opts["out"], "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    parts = [f"  {rec['target']:<11} run {rec['run']}"]
    if "rps" in rec:
        parts.append(f"{rec['rps']:>10.0f} req/s")
    if rec.get("p99_ms") is not None:
        parts.append(f"p50 {rec['p50_ms']:.2f} ms  p99 {rec['p99_ms']:.2f} ms")
    if rec.get("mb_s") and tool != "none" and rec.get("scenario") == "5":
        parts.append(f"{rec['mb_s']:.0f} MB/s")
    if "cpu_us_per_req" in rec:
        parts.append(f"cpu {rec['cpu_us_per_req']:.1f} us/req")
    if "rss_kib_per_conn" in rec:
        parts.append(f"{rec['rss_kib_per_conn']:.2f} KiB/conn")
    if rec.get("errors"):
        parts.append(f"ERRORS {rec['errors']}")
    print("  ".join(parts), flush=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "render": render,
        "routes": routes,
        "jwt": jwt,
        "apikeys": apikeys,
        "passwords": passwords,
        "cpu": cpu,
        "rss": rss,
        "threads": threads,
        "quiet": quiet,
        "ticks": ticks,
        "foreign": foreign,
        "record": record,
    }[cmd](args)


if __name__ == "__main__":
    main()
