#!/usr/bin/env python3
"""The official Python SDK (alibabacloud-onsmqtt20200420) against `mqtt-provision simulate`.

Registers and fetches credentials with V3 (the SDK default) and V1 (signature_algorithm='v2')
signatures, with an STS token, once with ClientId in a form body (call_api, formData), reads a
register code (a GET action), and checks that a wrong
secret and a duplicate Register are refused with the documented codes. Exits non-zero on any
mismatch; prints a closing 'N passed, N failed' line.
"""
import subprocess
import sys

from alibabacloud_onsmqtt20200420 import models
from alibabacloud_onsmqtt20200420.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_util import models as util_models

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/mqtt-provision"
INSTANCE = "post-cn-rehearsal01"  # the rehearsal instance, as in the README
KEYS = [("LTAI5tSimulatorRehearsal", "simulator-rehearsal-secret", None), ("INTEROPSTS", "sts-secret", "CAIS-interop-token")]

results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        results["passed"] += 1
        print(f"ok   {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name} {detail}")


def client(port, key_id, secret, token=None, v1=False):
    config = open_api_models.Config(
        access_key_id=key_id,
        access_key_secret=secret,
        security_token=token,
        endpoint=f"127.0.0.1:{port}",
        protocol="http",
        region_id="cn-hangzhou",
    )
    if v1:
        config.signature_algorithm = "v2"
    return Client(config)


def register_with_body(c, cid):
    """RegisterDeviceCredential through the SDK's generic call_api with ClientId in a form body
    (req_body_type='formData'): how a caller of the current generation adds body parameters."""
    params = open_api_models.Params(
        action="RegisterDeviceCredential", version="2020-04-20", protocol="HTTP", pathname="/",
        method="POST", auth_type="AK", style="RPC", req_body_type="formData", body_type="json",
    )
    request = open_api_models.OpenApiRequest(query={"InstanceId": INSTANCE}, body={"ClientId": cid})
    return c.call_api(params, request, util_models.RuntimeOptions())["body"]


def error_code(call):
    try:
        call()
    except Exception as e:  # the SDK raises ClientException / ServerException
        return getattr(e, "code", None) or str(e)
    return None


def main():
    args = [BINARY, "simulate", "--listen", "127.0.0.1:0", "--instance-id", INSTANCE]
    for key_id, secret, token in KEYS:
        args += ["--access-key", f"{key_id}:{secret}" + (f":{token}" if token else "")]
    sim = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        line = sim.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        for label, key, v1 in [("V3", KEYS[0], False), ("V1", KEYS[0], True), ("V3+STS", KEYS[1], False), ("V1+STS", KEYS[1], True)]:
            c = client(port, *key, v1=v1)
            cid = f"GID_interop@@@{label.replace('+', '-')}"
            reg = c.register_device_credential(models.RegisterDeviceCredentialRequest(client_id=cid, instance_id=INSTANCE))
            cred = reg.body.device_credential
            check(f"{label} register", cred.client_id == cid and cred.device_access_key_id.startswith("DC."), str(reg.body))
            got = c.get_device_credential(models.GetDeviceCredentialRequest(client_id=cid, instance_id=INSTANCE))
            check(f"{label} get returns the same credential", got.body.device_credential.device_access_key_secret == cred.device_access_key_secret)
            dup = error_code(lambda: c.register_device_credential(models.RegisterDeviceCredentialRequest(client_id=cid, instance_id=INSTANCE)))
            check(f"{label} duplicate register refused", dup == "DeviceCredentialExsit", str(dup))
            nf = error_code(lambda: c.get_device_credential(models.GetDeviceCredentialRequest(client_id=cid + "-nobody", instance_id=INSTANCE)))
            check(f"{label} not found", nf == "DeviceCredentialNotFound", str(nf))
            body_cid = cid + "-body"
            by_body = register_with_body(c, body_cid)
            check(f"{label} register with a form body", by_body["DeviceCredential"]["ClientId"] == body_cid, str(by_body))
            code = c.get_register_code(models.GetRegisterCodeRequest(mqtt_instance_id=INSTANCE))
            check(f"{label} GET action", len(code.body.register_code or "") == 32, str(code.body))
            wrong = client(port, key[0], "wrong-secret", key[2], v1=v1)
            err = error_code(lambda: wrong.get_device_credential(models.GetDeviceCredentialRequest(client_id=cid, instance_id=INSTANCE)))
            check(f"{label} wrong secret refused", err == "SignatureDoesNotMatch", str(err))
    except Exception as e:  # an unexpected refusal ends the run as one more failure
        check("no unexpected error", False, f"{type(e).__name__}: {e}"[:500])
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
