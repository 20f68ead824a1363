"""Init time of each built Lambda bootstrap under cargo-lambda's local Runtime API.

For each function, N times: start the bootstrap (a fresh process, as a cold start), invoke it
with its fixture, then invoke it again. The first answer takes init + one invocation, the second
one warm invocation: init ~= first - second. The AWS API is a private moto server; the
dispatcher's target is `relay target`. Run by `loadtest/bench.sh lambda` (after
scripts/build-lambdas.sh); needs boto3 (the .venv-moto interpreter has it).

    python lambda_init.py LAMBDA_DIR RELAY_BIN CARGO_LAMBDA [RUNS]
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time, zipfile

import boto3

LAMBDA_DIR, RELAY, CARGO_LAMBDA = sys.argv[1:4]
RUNS = int(sys.argv[4]) if len(sys.argv) > 4 else 5
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EVENTS = os.path.join(ROOT, "lambdas", "events")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


procs = []
moto_port = free_port()
procs.append(subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                               "-H", "127.0.0.1", "-p", str(moto_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
target_port = free_port()
procs.append(subprocess.Popen([RELAY, "target", "--listen", f"127.0.0.1:{target_port}", "--rate", "1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
wait_port(moto_port)
wait_port(target_port)
endpoint = f"http://127.0.0.1:{moto_port}"
env = dict(os.environ, AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
           AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
# The stack, as `relay up --backend aws --create-resources` makes it.
up = subprocess.Popen([RELAY, "up", "--backend", "aws", "--create-resources", "--stack", "init",
                       "--listen", "127.0.0.1:0", "--api-key", "k",
                       "--target-url", f"http://127.0.0.1:{target_port}/graphql"],
                      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
up.stdout.readline()
up.terminate()
up.wait()

functions = {
    "receiver": ("apigw-rest-post-event.json", {"RELAY_API_KEY": "fixture-key",
                                                 "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH": "true"}),
    "forwarder": ("dynamodb-stream-insert.json", {}),
    "dispatcher": ("sqs-batch.json", {"RELAY_TARGET_URL": f"http://127.0.0.1:{target_port}/graphql"}),
}
print("| function | init (median of %d) | first invoke | warm invoke |" % RUNS)
print("|---|---|---|---|")
work = tempfile.mkdtemp()
try:
    for name, (fixture, extra) in functions.items():
        bootstrap = os.path.join(work, name)
        with zipfile.ZipFile(os.path.join(LAMBDA_DIR, f"relay-{name}", "bootstrap.zip")) as z:
            with open(bootstrap, "wb") as out:
                out.write(z.read("bootstrap"))
        os.chmod(bootstrap, 0o755)
        inits, firsts, warms = [], [], []
        for _ in range(RUNS):
            port = free_port()
            runtime = subprocess.Popen([CARGO_LAMBDA, "lambda", "watch", "--only-lambda-apis",
                                        "-A", "127.0.0.1", "-P", str(port)], cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            invoke = [CARGO_LAMBDA, "lambda", "invoke", "-A", "127.0.0.1", "-P", str(port),
                      "--data-file", os.path.join(EVENTS, fixture)]
            fenv = dict(env, RELAY_STACK="init", AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt",
                        AWS_LAMBDA_FUNCTION_NAME="_", AWS_LAMBDA_FUNCTION_VERSION="1",
                        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128", **extra)
            t0 = time.perf_counter()
            fn = subprocess.Popen([bootstrap], env=fenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            first = subprocess.run(invoke, capture_output=True, timeout=60)
            t1 = time.perf_counter()
            second = subprocess.run(invoke, capture_output=True, timeout=60)
            t2 = time.perf_counter()
            # The invoke command's own start-up is in both; the difference is init.
            if first.returncode or second.returncode:
                raise SystemExit(f"{name}: invoke failed: {first.stderr[-300:]!r} {second.stderr[-300:]!r}")
            firsts.append((t1 - t0) * 1000)
            warms.append((t2 - t1) * 1000)
            inits.append(firsts[-1] - warms[-1])
            fn.kill(); fn.wait(); runtime.kill(); runtime.wait()
        print(f"| relay-{name} | {statistics.median(inits):.0f} ms | {statistics.median(firsts):.0f} ms | {statistics.median(warms):.0f} ms |")
finally:
    for p in procs:
        p.kill()
        p.wait()
