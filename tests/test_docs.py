"""The docs describe the software as it is: every module has its line in the architecture,
every setting its row in the configuration, and every link between the docs leads somewhere."""

import re
from pathlib import Path

import huabu
from huabu.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = Path(huabu.__file__).parent


def test_every_module_is_in_the_architecture():
    text = (DOCS / "architecture.md").read_text()
    modules = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if "migrations" not in path.parts
    ]
    assert len(modules) > 100
    assert [m for m in sorted(modules) if f"`{m}`" not in text] == []


def test_every_setting_is_in_the_configuration():
    text = (DOCS / "configuration.md").read_text()
    names = [f"HUABU_{name.upper()}" for name in Settings.model_fields]
    assert [name for name in names if f"`{name}`" not in text] == []
    # ... and the page names no setting that does not exist.
    mentioned = set(re.findall(r"`(HUABU_[A-Z0-9_]+)`", text))
    assert mentioned - set(names) == set()


def test_links_between_the_docs_lead_somewhere():
    broken = []
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
