#!/usr/bin/env node
// The official Node.js RPC client (@alicloud/pop-core, V1 signatures) against
// `mqtt-provision simulate`, with the simulator's rehearsal key and instance.
//
// This generation sends a POST with *every* parameter (Action, the signature fields, the
// action's own) as a form body and nothing in the query; a GET with everything in the query.
// Registers, gets, a duplicate, a not-found, a wrong secret and GetRegisterCode (GET).
// Exits non-zero on any mismatch; prints a closing 'N passed, N failed' line.
// Usage: NODE_PATH=<dir>/node_modules node pop_core_interop.js [path/to/mqtt-provision]
'use strict';

const { spawn } = require('child_process');
const readline = require('readline');
const RPCClient = require('@alicloud/pop-core').RPCClient;

const BINARY = process.argv[2] || 'target/release/mqtt-provision';
const INSTANCE = 'post-cn-rehearsal01';

// --- the snippet the README shows ---------------------------------------------------------------
function client(port, secret = 'simulator-rehearsal-secret') {
  return new RPCClient({
    accessKeyId: 'LTAI5tSimulatorRehearsal',
    accessKeySecret: secret,
    endpoint: `http://127.0.0.1:${port}`,
    apiVersion: '2020-04-20',
  });
}
// e.g. await client(port).request('RegisterDeviceCredential',
//        { ClientId: 'GID_demo@@@device-1', InstanceId: INSTANCE }, { method: 'POST' });
// -------------------------------------------------------------------------------------------------

let passed = 0;
let failed = 0;
function check(name, condition, detail) {
  if (condition) passed++; else failed++;
  console.log(`${condition ? 'ok  ' : 'FAIL'} ${name}${condition ? '' : ' ' + JSON.stringify(detail)}`);
}

async function errorCode(promise) {
  try {
    await promise;
    return null;
  } catch (e) {
    return e.code || String(e);
  }
}

async function main() {
  const sim = spawn(BINARY, ['simulate', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const line = await new Promise((resolve, reject) => {
      readline.createInterface({ input: sim.stdout }).once('line', resolve);
      sim.once('exit', (code) => reject(new Error(`simulate exited with ${code}`)));
    });
    const port = Number(line.split('http://127.0.0.1:')[1].split(/\s/)[0]);
    const c = client(port);
    const post = { method: 'POST' };
    const cid = 'GID_popcore@@@device-1';
    const params = { ClientId: cid, InstanceId: INSTANCE };

    const reg = await c.request('RegisterDeviceCredential', params, post);
    check('register (all in the form body)', reg.DeviceCredential.ClientId === cid
      && reg.DeviceCredential.DeviceAccessKeyId.startsWith('DC.'), reg);
    const got = await c.request('GetDeviceCredential', params, post);
    check('get', got.DeviceCredential.DeviceAccessKeySecret === reg.DeviceCredential.DeviceAccessKeySecret, got);
    const dup = await errorCode(c.request('RegisterDeviceCredential', params, post));
    check('duplicate register refused', dup === 'DeviceCredentialExsit', dup);
    const nf = await errorCode(c.request('GetDeviceCredential', { ClientId: 'GID_popcore@@@nobody', InstanceId: INSTANCE }, post));
    check('not found', nf === 'DeviceCredentialNotFound', nf);
    const wrong = await errorCode(client(port, 'wrong-secret').request('GetDeviceCredential', params, post));
    check('wrong secret refused', wrong === 'SignatureDoesNotMatch', wrong);
    const code = await c.request('GetRegisterCode', { MqttInstanceId: INSTANCE }, { method: 'GET' });
    check('GetRegisterCode (GET, all in the query)', (code.RegisterCode || '').length === 32, code);
  } catch (e) {
    // An unexpected refusal ends the run as one more failure.
    check('no unexpected error', false, `${e.code || ''} ${e.message}`.slice(0, 500));
  } finally {
    sim.kill('SIGTERM');
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

main().then((rc) => process.exit(rc), (e) => {
  console.error(e);
  process.exit(1);
});
