"""The license ids the Hugging Face Hub accepts in a card's `license` field.

Written here because no library ships the list (huggingface_hub and datasets do not check it;
the Hub does, on each commit): the table of https://huggingface.co/docs/hub/repositories-licenses
(hub-docs, 2025), plus the later Llama and Apple ids. A license the Hub does not list is given
as `other` (the card then names it, with the text in a LICENSE file).
"""
from __future__ import annotations

import difflib

HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1
lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa
unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4
gemma apple-ascl apple-amlr unknown other
""".split())


def license_problem(license_id: str) -> str | None:
    """Why the Hub would refuse `license_id` in a card (None: it is one of its ids)."""
    if license_id in HUB_LICENSES:
        return None
    near = difflib.get_close_matches(license_id.lower(), sorted(HUB_LICENSES), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    return (f"not a Hub license id ({hint}the Hub's ids: https://huggingface.co/docs/hub/repositories-licenses; "
            "a license it does not list is given as other)")
