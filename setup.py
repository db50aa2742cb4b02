"""Which packages the wheel holds; everything else about labkit is declared in pyproject.toml.

A setup.py only because pyproject.toml cannot say both "every labkit.* package" and "the data/ folder as the
package labkit._data": the wheel carries the lab's data (the tokenizer, price table and latency profiles the
library reads) inside the package, where `labkit.data` finds it when labkit is installed rather than checked out.
"""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: a data-only folder such as the web chat's static/ is a package of its own
    packages=[*find_namespace_packages(include=["labkit", "labkit.*"], exclude=["*.__pycache__"]), "labkit._data"],
    package_dir={"labkit._data": "data"},
)
