"""Report files are written atomically yet get the mode any new file gets (not mkstemp's private 0600)."""

import os
import stat

from tl_moe.report.files import write_text


def test_written_report_files_have_the_mode_a_plain_open_gives(tmp_path):
    previous = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x", encoding="utf-8")
        written = tmp_path / "results.json"
        write_text(written, "{}")
        assert written.read_text(encoding="utf-8") == "{}"
        assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644
        os.umask(0o077)
        private = tmp_path / "private.json"
        write_text(private, "{}")
        assert stat.S_IMODE(private.stat().st_mode) == 0o600  # the umask still rules
    finally:
        os.umask(previous)
