"""MkDocs hook: show the Sphinx roles of madyn's docstrings (:func:`name`, :data:`NAME`, ...)
as plain code on the API page, as a reader of the source sees them, without the role name."""

import re

_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|exc|obj):(<code>)")


def on_page_content(html, page, config, files):
    return _ROLE.sub(r"\1", html)
