#!/usr/bin/env python3
"""The official credential providers (alibabacloud-credentials) against `mqtt-provision simulate`.

The official RamRoleArn provider signs AssumeRole itself, so the simulator's STS is checked
against the official signer; the OIDC, ECS metadata (IMDSv2 token first) and credentials-URI
providers read what the simulator serves. A key each provider got is then used by
`mqtt-provision register` (through ALIBABA_CLOUD_* variables) against the same simulator.
Exits non-zero on any mismatch; prints a closing 'N passed, N failed' line.
"""
import os
import subprocess
import sys
import tempfile

from alibabacloud_credentials.provider import (
    EcsRamRoleCredentialsProvider,
    OIDCRoleArnCredentialsProvider,
    RamRoleArnCredentialsProvider,
    StaticAKCredentialsProvider,
    URLCredentialsProvider,
)

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/mqtt-provision"
INSTANCE = "post-cn-rehearsal01"
AK, SECRET = "LTAI5tSimulatorRehearsal", "simulator-rehearsal-secret"
ROLE_ARN = "acs:ram::1234567890123456:role/provisioner"
OIDC_PROVIDER_ARN = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1"
OIDC_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl"

results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name} {detail}")


def start_simulator():
    proc = subprocess.Popen(
        [BINARY, "simulate", "--listen", "127.0.0.1:0", "--sts-ttl", "1000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    return proc, port


def usable(name, creds, port, workdir):
    """`register` with the key in the environment: the simulator accepts what it issued."""
    csv = os.path.join(workdir, f"{name}.csv")
    with open(csv, "w") as f:
        f.write(f"client_id\nGID_test@@@{name}-1\nGID_test@@@{name}-2\n")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": workdir,
        "ALIBABA_CLOUD_ACCESS_KEY_ID": creds.get_access_key_id(),
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds.get_access_key_secret(),
        "ALIBABA_CLOUD_SECURITY_TOKEN": creds.get_security_token(),
    }
    out = subprocess.run(
        [BINARY, "register", csv, "--ledger", os.path.join(workdir, f"{name}.sqlite"),
         "--instance-id", INSTANCE, "--endpoint", f"127.0.0.1:{port}", "--quiet"],
        env=env, capture_output=True, text=True,
    )
    check(f"{name}: the key works for OnsMqtt", out.returncode == 0, out.stderr[-400:])


def main():
    proc, port = start_simulator()
    base = f"http://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp()
    try:
        role = RamRoleArnCredentialsProvider(
            credentials_provider=StaticAKCredentialsProvider(
                access_key_id=AK, access_key_secret=SECRET),
            role_arn=ROLE_ARN, role_session_name="interop", duration_seconds=900,
            sts_endpoint=base,
        )
        creds = role.get_credentials()
        check("AssumeRole signed by the official provider is accepted",
              creds.get_access_key_id().startswith("STS."), creds.get_access_key_id())
        usable("role", creds, port, workdir)

        try:
            RamRoleArnCredentialsProvider(
                credentials_provider=StaticAKCredentialsProvider(
                    access_key_id=AK, access_key_secret="wrong"),
                role_arn=ROLE_ARN, sts_endpoint=base,
            ).get_credentials()
            check("a wrong secret is refused", False, "no error")
        except Exception as e:  # the official provider raises CredentialException
            check("a wrong secret is refused with SignatureDoesNotMatch",
                  "SignatureDoesNotMatch" in str(e), str(e)[:200])

        token = os.path.join(workdir, "token")
        with open(token, "w") as f:
            f.write(OIDC_TOKEN)
        oidc = OIDCRoleArnCredentialsProvider(
            role_arn=ROLE_ARN, oidc_provider_arn=OIDC_PROVIDER_ARN,
            oidc_token_file_path=token, role_session_name="interop", sts_endpoint=base,
        )
        creds = oidc.get_credentials()
        check("AssumeRoleWithOIDC", creds.get_security_token().startswith("CAIS"))
        usable("oidc", creds, port, workdir)

        ecs = EcsRamRoleCredentialsProvider(disable_imds_v1=True)
        # The official provider fixes the address; point it at the simulator.
        ecs._EcsRamRoleCredentialsProvider__metadata_service_host = base
        creds = ecs.get_credentials()
        check("ECS RAM role with IMDSv1 disabled (IMDSv2 only)",
              creds.get_access_key_id().startswith("STS."))
        usable("ecs", creds, port, workdir)

        uri = URLCredentialsProvider(uri=f"{base}/credentials-uri")
        creds = uri.get_credentials()
        check("credentials URI", creds.get_access_key_id().startswith("STS."))
        usable("uri", creds, port, workdir)

        import json
        import urllib.request
        stats = json.load(urllib.request.urlopen(f"{base}/__sim/stats"))["temporary"]
        check("the simulator counted each", stats["assume_role"] == 1
              and stats["assume_role_with_oidc"] == 1 and stats["metadata_tokens"] >= 1
              and stats["metadata_v1_reads"] == 0 and stats["credentials_uri"] == 1, str(stats))
    finally:
        proc.terminate()
        proc.wait()
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
