#!/usr/bin/env python3
"""Writes a single-layer container image as a Docker archive (the `docker save` layout), with no
daemon: the layer tar, the image config and manifest.json, all byte-for-byte reproducible (fixed
mtimes and owners, sorted entries), so an unchanged image gives an unchanged tarball.

The archive is what `ctr -n k8s.io images import` and `kind load image-archive` take.

    mkimage.py --tag gearfleet/broker:dev --out broker.tar --entrypoint /gearfleet-broker \
        --file /abs/path/on/host:/path/in/image --symlink /bin/sh=busybox --dir /tmp:1777 ...
"""

import argparse
import hashlib
import io
import json
import os
import tarfile


def add_dirs(tar, seen, path):
    """Adds the parent folders of `path` (relative, no leading slash) that are not in yet."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in seen:
            seen.add(d)
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)


def reset(info, mode):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = mode
    return info


def layer(args):
    entries = []  # (path in image, kind, payload, mode)
    for spec in args.file:
        src, dest = spec.split(":", 1)
        st = os.stat(src)  # follows symlinks: the image gets the real bytes
        entries.append((dest.lstrip("/"), "file", src, st.st_mode & 0o7777))
    for spec in args.tree:
        src, dest = spec.split(":", 1)
        skip = set(args.tree_exclude) | {"__pycache__"}
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in skip)
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                host = os.path.join(root, name)
                inside = os.path.join(dest, os.path.relpath(host, src)).lstrip("/")
                if os.path.islink(host):
                    entries.append((inside, "symlink", os.readlink(host), 0o777))
                elif os.path.isfile(host):
                    entries.append((inside, "file", host, os.stat(host).st_mode & 0o7777))
    for spec in args.text:
        dest, content = spec.split("=", 1)
        entries.append((dest.lstrip("/"), "text", content.replace("\\n", "\n").encode(), 0o644))
    for spec in args.symlink:
        dest, target = spec.split("=", 1)
        entries.append((dest.lstrip("/"), "symlink", target, 0o777))
    for spec in args.dir:
        dest, _, rest = spec.partition(":")
        mode, _, owner = rest.partition(":")
        entries.append((dest.strip("/"), "dir", owner or None, int(mode or "755", 8)))
    entries.sort(key=lambda e: e[0])

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()
        for path, kind, payload, mode in entries:
            add_dirs(tar, seen, path)
            info = tarfile.TarInfo(path)
            if kind == "dir":
                if path in seen:
                    continue
                seen.add(path)
                info.type = tarfile.DIRTYPE
                reset(info, mode)
                if payload:  # UID:GID
                    info.uid, info.gid = (int(n) for n in payload.split(":"))
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(reset(info, mode))
            elif kind == "text":
                info.size = len(payload)
                tar.addfile(reset(info, mode), io.BytesIO(payload))
            else:
                with open(payload, "rb") as f:
                    data = f.read()
                info.size = len(data)
                tar.addfile(reset(info, mode), io.BytesIO(data))
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True, action="append", help="repo:tag, repeatable")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", action="append", default=[], help="one argv word, repeatable")
    p.add_argument("--cmd", action="append", default=[], help="one argv word, repeatable")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--port", action="append", default=[], help="4730/tcp")
    p.add_argument("--label", action="append", default=[], help="key=value")
    p.add_argument("--file", action="append", default=[], help="HOST_PATH:IMAGE_PATH")
    p.add_argument("--tree", action="append", default=[], help="HOST_DIR:IMAGE_DIR, every file below")
    p.add_argument("--tree-exclude", action="append", default=[], help="a folder name --tree skips")
    p.add_argument("--text", action="append", default=[], help="IMAGE_PATH=CONTENT (\\n for newlines)")
    p.add_argument("--symlink", action="append", default=[], help="IMAGE_PATH=TARGET")
    p.add_argument("--dir", action="append", default=[], help="IMAGE_PATH[:MODE[:UID:GID]]")
    args = p.parse_args()

    layer_tar = layer(args)
    diff_id = hashlib.sha256(layer_tar).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + args.env,
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "WorkingDir": args.workdir,
            "ExposedPorts": {port: {} for port in args.port} or None,
            "Labels": dict(label.split("=", 1) for label in args.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/images/mkimage.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config_json).hexdigest()
    manifest = [{"Config": config_id + ".json", "RepoTags": args.tag, "Layers": [diff_id + "/layer.tar"]}]
    manifest_json = json.dumps(manifest, separators=(",", ":")).encode()

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        def put(name, data, mode=0o644, directory=False):
            info = tarfile.TarInfo(name)
            if directory:
                info.type = tarfile.DIRTYPE
                out.addfile(reset(info, 0o755))
            else:
                info.size = len(data)
                out.addfile(reset(info, mode), io.BytesIO(data))
        put(diff_id, b"", directory=True)
        put(diff_id + "/layer.tar", layer_tar)
        put(config_id + ".json", config_json)
        put("manifest.json", manifest_json)
    os.replace(tmp, args.out)
    print(f"{args.out}: {', '.join(args.tag)} (layer {len(layer_tar) // 1024} KiB, image sha256:{config_id[:12]})")


if __name__ == "__main__":
    main()
