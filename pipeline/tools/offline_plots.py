"""An HTML template for `dvc plots show` with Vega inlined, so the charts render offline.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN; on a machine that reaches
only the package registries its charts stay blank. This builds DVC's page with those three
libraries taken from the npm registry (`npm pack`, checked against pinned sha256) and inlined:
`make plots` passes it to `--html-template`.
"""

from __future__ import annotations

import logging
import subprocess
import tarfile
import tempfile
from pathlib import Path

from dvc_render.html import PAGE_HTML

from pipeline.data.files import sha256_file, write_text
from pipeline.runtime import cli

log = logging.getLogger(__name__)

# npm package → its tarball's sha256; versions as dvc-render's page asks for them
LIBRARIES = {
    "vega@5.20.2": "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d",
    "vega-lite@5.2.0": "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b",
    "vega-embed@6.18.2": "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b",
}


class PlotsTemplateError(Exception):
    """A library could not be fetched or did not verify; the message says which."""


def fetch_script(package: str, sha256: str, workdir: Path) -> str:
    """Download one npm tarball (no install, no scripts run), verify it, return its script as an
    inline element (`</script` inside escaped, so that it cannot end it)."""
    command = ["npm", "pack", "--silent", "--pack-destination", str(workdir), package]
    try:
        packed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise PlotsTemplateError(f"npm pack {package} failed: {detail.strip()}") from None
    tarball = workdir / packed.stdout.split()[-1]
    actual = sha256_file(tarball)
    if actual != sha256:
        raise PlotsTemplateError(f"{package}: sha256 {actual}, expected {sha256}")
    with tarfile.open(tarball) as archive:
        member = f"package/build/{package.rpartition('@')[0]}.min.js"
        script = archive.extractfile(member).read().decode()
    return "    <script>" + script.replace("</script", "<\\/script") + "</script>"


def run(output: Path) -> Path:
    """Write the template to `output` (once: an existing file is kept)."""
    if output.is_file():
        return output
    with tempfile.TemporaryDirectory(prefix="vega-") as workdir:
        scripts = [fetch_script(*library, Path(workdir)) for library in LIBRARIES.items()]
    page = PAGE_HTML.replace("{scripts}", "\n".join(['<meta charset="utf-8">', *scripts]))
    write_text(output, page)
    log.info("wrote %s with %s inlined", output, ", ".join(LIBRARIES))
    return output


ARGUMENTS = {"output": {"type": Path, "help": "where to write the HTML template"}}


def main(argv: list[str] | None = None) -> None:
    cli.run_command(run, argv, __doc__, ARGUMENTS, (PlotsTemplateError,))


if __name__ == "__main__":
    main()
