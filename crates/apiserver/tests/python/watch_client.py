"""The official Kubernetes Python client against the facade.

Run by tests/python_client.rs with /usr/bin/python3 (Debian's
python3-kubernetes 22.6):

    watch_client.py SERVER NAMESPACE TIMEOUT_SECONDS

1. writes through the client: create, strategic-merge patch (what 22.6 sends
   for a dict body), read back, delete a ConfigMap;
2. lists pods and configmaps in NAMESPACE;
3. prints {"ready": ...} and watches both resources from their list's
   resourceVersion (one thread each, timeout_seconds=TIMEOUT_SECONDS) until
   an object named "done" is ADDED;
4. watches configmaps from resourceVersion 1, which the test compacted
   away: the client must raise ApiException 410.

Everything printed is one JSON object per line. Each event's
resourceVersion must be greater than the previous one of its stream; any
failure prints {"error": ...} and exits non-zero.
"""

import json
import sys
import threading

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

OUT = threading.Lock()
FAILED = []


def emit(**fields):
    with OUT:
        print(json.dumps(fields, sort_keys=True), flush=True)


def fail(message):
    FAILED.append(message)
    emit(error=message)


def crud(core, ns):
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="py-cm", labels={"from": "python"}),
        data={"k": "v"},
    )
    created = core.create_namespaced_config_map(ns, body)
    patched = core.patch_namespaced_config_map(
        "py-cm", ns, {"data": {"k2": "v2"}, "metadata": {"labels": {"patched": "yes"}}}
    )
    got = core.read_namespaced_config_map("py-cm", ns)
    status = core.delete_namespaced_config_map("py-cm", ns)
    try:
        core.read_namespaced_config_map("py-cm", ns)
        fail("py-cm still readable after delete")
    except ApiException as e:
        emit(phase="crud-gone", status=e.status)
    emit(
        phase="crud",
        uid_kept=created.metadata.uid == got.metadata.uid,
        rv_grew=int(patched.metadata.resource_version) > int(created.metadata.resource_version),
        data=got.data,
        labels=got.metadata.labels,
        delete_status=status.status,
    )


def watch_until_done(list_fn, resource, ns, rv, timeout):
    w = watch.Watch()
    last = int(rv)
    done = False
    try:
        for ev in w.stream(
            list_fn,
            ns,
            resource_version=rv,
            timeout_seconds=timeout,
            allow_watch_bookmarks=True,
        ):
            raw = ev["raw_object"]
            meta = raw.get("metadata", {})
            ev_rv = int(meta.get("resourceVersion", "0"))
            if ev["type"] == "BOOKMARK":
                if ev_rv < last:
                    fail(f"{resource}: bookmark {ev_rv} went back from {last}")
                continue
            if ev_rv <= last:
                fail(f"{resource}: resourceVersion {ev_rv} not after {last}")
            last = ev_rv
            obj = ev["object"]  # the client's model (V1Pod, V1ConfigMap)
            emit(
                resource=resource,
                type=ev["type"],
                name=obj.metadata.name,
                rv=ev_rv,
                labels=obj.metadata.labels or {},
            )
            if obj.metadata.name == "done" and ev["type"] == "ADDED":
                done = True
                w.stop()
    except Exception as e:  # noqa: BLE001 - reported to the test
        fail(f"{resource}: watch failed: {e!r}")
        return
    if not done:
        fail(f"{resource}: watch ended after {timeout}s without the 'done' event")
    emit(resource=resource, end=True)


def expect_expired(core, ns):
    w = watch.Watch()
    try:
        for ev in w.stream(
            core.list_namespaced_config_map, ns, resource_version="1", timeout_seconds=5
        ):
            fail(f"unexpected event from a compacted revision: {ev['type']}")
            return
        fail("watch from a compacted revision ended without an error")
    except ApiException as e:
        emit(phase="expired", status=e.status, reason=str(e.reason))


def main():
    server, ns, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = client.Configuration()
    cfg.host = server
    api = client.ApiClient(cfg)
    client.Configuration.set_default(cfg)
    core = client.CoreV1Api(api)

    crud(core, ns)
    pods = core.list_namespaced_pod(ns, _request_timeout=timeout)
    cms = core.list_namespaced_config_map(ns, _request_timeout=timeout)
    for kind, lst in (("pods", pods), ("configmaps", cms)):
        emit(
            list=kind,
            resourceVersion=lst.metadata.resource_version,
            names=[i.metadata.name for i in lst.items],
        )
    emit(ready=True)

    threads = [
        threading.Thread(
            target=watch_until_done,
            args=(fn, resource, ns, lst.metadata.resource_version, timeout),
        )
        for fn, resource, lst in (
            (core.list_namespaced_pod, "pods", pods),
            (core.list_namespaced_config_map, "configmaps", cms),
        )
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect_expired(core, ns)
    emit(finished=True, failures=len(FAILED))
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - reported to the test
        emit(error=f"client failed: {e!r}")
        sys.exit(1)
