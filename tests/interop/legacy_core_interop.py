#!/usr/bin/env python3
"""The legacy official Python core SDK (aliyun-python-sdk-core, RPC V1 signatures) against
`mqtt-provision simulate`, with the simulator's rehearsal key and instance.

This generation sends the common parameters in the query and whatever the caller adds with
`add_body_params` as a form body, signing both together; it also adds `RegionId` and an empty
`SignatureType`. Registers (ClientId in the body, InstanceId in the query), gets (JSON, then XML
through the SDK's `do_action`, the only call of it that keeps `Format=XML`), a duplicate, a
not-found (also as an XML <Error>), a wrong secret, and GetRegisterCode (GET).
Exits non-zero on any mismatch; prints a closing 'N passed, N failed' line.
"""
import json
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/mqtt-provision"
INSTANCE = "post-cn-rehearsal01"
KEY_ID, SECRET = "LTAI5tSimulatorRehearsal", "simulator-rehearsal-secret"

results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    results["passed" if condition else "failed"] += 1
    print(f"{'ok  ' if condition else 'FAIL'} {name} {'' if condition else detail}")


# --- the snippet the README shows ---------------------------------------------------------------
def build(port, action, method="POST", query=None, body=None, fmt="json"):
    request = CommonRequest()
    request.set_domain(f"127.0.0.1:{port}")
    request.set_protocol_type("http")
    request.set_method(method)
    request.set_version("2020-04-20")
    request.set_action_name(action)
    request.set_accept_format(fmt)
    for k, v in (query or {}).items():
        request.add_query_param(k, v)
    for k, v in (body or {}).items():
        request.add_body_params(k, v)  # sent as a form body, signed with the query
    return request


def send(request, secret=SECRET):
    client = AcsClient(KEY_ID, secret, "cn-hangzhou", auto_retry=False)
    if request.get_accept_format() == "json":
        return client.do_action_with_exception(request)  # the JSON body; errors raise
    # do_action_with_exception forces Format=JSON; the deprecated do_action keeps the format and
    # returns any body, an XML <Error> included, without raising.
    return client.do_action(request)


def call(port, action, secret=SECRET, **kwargs):
    return send(build(port, action, **kwargs), secret)
# -------------------------------------------------------------------------------------------------


def error_of(thunk):
    try:
        thunk()
    except ServerException as e:
        return e
    return None


def main():
    warnings.simplefilter("ignore", DeprecationWarning)
    sim = subprocess.Popen([BINARY, "simulate", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(sim.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        cid = "GID_legacy@@@device-1"
        where = {"InstanceId": INSTANCE}
        reg = json.loads(call(port, "RegisterDeviceCredential", query=where, body={"ClientId": cid}))
        cred = reg["DeviceCredential"]
        check("register (form body + query)", cred["ClientId"] == cid and cred["DeviceAccessKeyId"].startswith("DC."), reg)

        got = json.loads(call(port, "GetDeviceCredential", body={"ClientId": cid, "InstanceId": INSTANCE}))
        check("get (all in the body)", got["DeviceCredential"]["DeviceAccessKeySecret"] == cred["DeviceAccessKeySecret"], got)

        xml = ET.fromstring(call(port, "GetDeviceCredential", query=where, body={"ClientId": cid}, fmt="xml"))
        check(
            "get as XML",
            xml.tag == "GetDeviceCredentialResponse" and xml.findtext("DeviceCredential/DeviceAccessKeySecret") == cred["DeviceAccessKeySecret"],
            ET.tostring(xml),
        )

        dup = error_of(lambda: call(port, "RegisterDeviceCredential", query=where, body={"ClientId": cid}))
        check("duplicate register refused", dup is not None and dup.get_error_code() == "DeviceCredentialExsit", dup)

        missing = {"ClientId": "GID_legacy@@@nobody", "InstanceId": INSTANCE}
        nf = error_of(lambda: call(port, "GetDeviceCredential", body=missing))
        check("not found", nf is not None and nf.get_error_code() == "DeviceCredentialNotFound", nf)

        nf_xml = ET.fromstring(call(port, "GetDeviceCredential", body=missing, fmt="xml"))
        check("not found as an XML <Error>", nf_xml.tag == "Error" and nf_xml.findtext("Code") == "DeviceCredentialNotFound", ET.tostring(nf_xml))

        signed = build(port, "GetDeviceCredential", body={"ClientId": cid, "InstanceId": INSTANCE})
        wrong = error_of(lambda: send(signed, secret="wrong-secret"))
        check("wrong secret refused", wrong is not None and wrong.get_error_code() == "SignatureDoesNotMatch", wrong)
        # The message carries the server's string to sign (onsmqtt-api.md §5); the SDK's own, over
        # query and body together, must be the same string.
        sdk_string = signed.request.string_to_sign
        check("same string to sign as the SDK", wrong is not None and wrong.get_error_msg().endswith("server string to sign is:" + sdk_string), sdk_string)

        code = json.loads(call(port, "GetRegisterCode", method="GET", query={"MqttInstanceId": INSTANCE}))
        check("GetRegisterCode (GET)", len(code.get("RegisterCode") or "") == 32, code)
    except Exception as e:  # an unexpected refusal ends the run as one more failure
        check("no unexpected error", False, f"{type(e).__name__}: {e}"[:500])
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
