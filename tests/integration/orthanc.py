"""A real PACS for the tests: Orthanc from Debian (``orthanc``, ``orthanc-dicomweb``; ``make system-deps``).

Each :func:`start` runs its own ``Orthanc CONFIG.json`` in a new process group, with its configuration, index and
storage under a folder the test owns, on free loopback ports, HTTP Basic authentication on, the DICOMweb plugin
loaded from its Debian path and the storage cache off (a file removed from the storage area is then really
gone, as on a PACS that lost it). Its DIMSE port serves AE title ``GUARDTEST`` to one known modality, ``GUARDIAN``
at 127.0.0.1 on a free port (``store_port``: where C-MOVE sends), which may C-FIND, C-GET and C-MOVE; any other
calling AE title is refused. It waits until ``/system`` answers and stops the process group at the end.
No system service is used or needed (if apt started one, it is left alone).

Where Orthanc is not installed the tests skip, saying so; under CI (``CI`` set) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

AET = "GUARDTEST"  # Orthanc's own AE title (the called AET of a dimse:// source)
CALLING_AET = "GUARDIAN"  # the default calling AET of guards.sources.dimse
PLUGIN_PATHS = (Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                Path("/usr/lib/orthanc/libOrthancDicomWeb.so"))


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if os.access(p, os.X_OK)), None)


def dicomweb_plugin() -> Path | None:
    found = next((p for p in PLUGIN_PATHS if p.is_file()), None)
    if found is None:  # another layout: ask dpkg where the package put it
        try:
            listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = next((Path(line) for line in listing.stdout.splitlines()
                      if "libOrthancDicomWeb.so" in line and Path(line).is_file()), None)
    return found


def missing() -> str | None:
    """Why Orthanc cannot be started here, or None."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (make system-deps: apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (make system-deps: apt-get install orthanc-dicomweb)"
    return None


def require() -> None:
    """Skip (fail under CI) when Orthanc is missing."""
    why = missing()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the PACS tests")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """One running Orthanc: its ports, credentials and storage folder, and REST helpers."""

    folder: Path
    http_port: int
    dicom_port: int
    user: str
    password: str
    process: subprocess.Popen[bytes]
    token: str = ""
    calling_aet: str = CALLING_AET  # the one modality Orthanc knows: C-FIND, C-GET and C-MOVE from this AET only
    store_port: int = 0  # where that modality listens: Orthanc's C-MOVE destination (guard's own Storage SCP)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def source(self, query: str = "") -> str:
        """The DICOMweb source URL, without credentials."""
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web" + (f"?{query}" if query else "")

    def dimse_source(self, query: str = "") -> str:
        """The DIMSE source URL (C-FIND + C-GET, or C-MOVE with ``mode=move``) from :attr:`calling_aet`."""
        params = "&".join(p for p in (f"calling_aet={self.calling_aet}",
                                      f"move_port={self.store_port}" if "mode=move" in query else "", query) if p)
        return f"dimse://{AET}@127.0.0.1:{self.dicom_port}?{params}"

    def session(self) -> requests.Session:
        s = requests.Session()
        if self.token:
            s.headers["Authorization"] = f"Bearer {self.token}"
        else:
            s.auth = (self.user, self.password)
        return s

    def upload(self, data: bytes) -> dict[str, Any]:
        """POST /instances: one Part 10 file, stored as sent."""
        r = self.session().post(f"{self.rest}/instances", data=data, timeout=60)
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise AssertionError(f"Orthanc did not store the instance: {answer}")
        return answer

    def get(self, path: str) -> Any:
        r = self.session().get(f"{self.rest}{path}", timeout=60)
        r.raise_for_status()
        return r.json()

    def find_instance(self, sop_uid: str) -> str:
        """Orthanc's id of the instance with ``sop_uid``."""
        r = self.session().post(f"{self.rest}/tools/lookup", data=sop_uid, timeout=60)
        r.raise_for_status()
        [hit] = [h for h in r.json() if h["Type"] == "Instance"]
        return str(hit["ID"])

    def delete_instance(self, sop_uid: str) -> None:
        self.session().delete(f"{self.rest}/instances/{self.find_instance(sop_uid)}", timeout=60).raise_for_status()

    def lose_file(self, sop_uid: str, keep: Path) -> Path:
        """Move the stored file of ``sop_uid`` out of the storage area to ``keep`` (the index still lists it)."""
        info = self.get(f"/instances/{self.find_instance(sop_uid)}/attachments/dicom/info")
        [stored] = list((self.folder / "storage").rglob(info["Uuid"]))
        shutil.move(stored, keep)
        return stored

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


# With a token, Orthanc's own authentication is off and this Lua filter admits only the bearer token (Orthanc
# passes the request headers with lower-case names).
TOKEN_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer %s'
end
"""


def _config(folder: Path, http_port: int, dicom_port: int, user: str, password: str, plugin: Path,
            token: str = "", calling_aet: str = CALLING_AET, store_port: int = 0) -> dict[str, Any]:
    lua: list[str] = []
    if token:
        (folder / "token.lua").write_text(TOKEN_FILTER % token, encoding="utf-8")
        lua = [str(folder / "token.lua")]
    return {
        "LuaScripts": lua,
        "Name": "guard-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "MaximumStorageCacheSize": 0,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        # DIMSE (Orthanc 1.10): only this modality may query and retrieve (C-FIND, C-GET, C-MOVE, each allowed by
        # default for a registered modality; DicomAlwaysAllowFind/Get/Move stay false, so an unknown calling AET is
        # refused), and its port is where C-MOVE sends the instances.
        "DicomModalities": {"guardian": {"AET": calling_aet, "Host": "127.0.0.1", "Port": store_port or 104}},
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": not token,
        "RegisteredUsers": {user: password},
        "HttpDescribeErrors": True,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


@contextmanager
def start(folder: Path, *, user: str = "steward", password: str = "orthanc-test-password",
          token: str = "", calling_aet: str = CALLING_AET) -> Iterator[Orthanc]:
    """A fresh Orthanc with its files under ``folder``, stopped (its process group) when the block ends; HTTP Basic
    with ``user`` and ``password``, or only ``Authorization: Bearer <token>`` when a token is given."""
    require()
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    assert binary is not None and plugin is not None
    last_error = ""
    for _ in range(3):  # a free port may be taken between choosing it and Orthanc binding it
        http_port, dicom_port, store_port = _free_port(), _free_port(), _free_port()
        for sub in ("storage", "index"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config = folder / "orthanc.json"
        config.write_text(json.dumps(_config(folder, http_port, dicom_port, user, password, plugin, token,
                                             calling_aet, store_port), indent=1))
        log = (folder / "orthanc.log").open("wb")
        process = subprocess.Popen([binary, str(config)], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        server = Orthanc(folder, http_port, dicom_port, user, password, process, token, calling_aet, store_port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if server.session().get(f"{server.rest}/system", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            last_error = server.log()[-3000:]
            _stop(process)
            continue
        try:
            yield server
        finally:
            _stop(process)
        return
    raise RuntimeError(f"Orthanc did not start; its log ends with:\n{last_error}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
