"""Our IMAP4rev1 client: a bounded, non-recursive parser (``wire``) and one connection type
(``connection``) that does TLS and STARTTLS strictly.

Why not aioimaplib underneath: its measured defects (recursion on ~1,000-line responses,
quadratic FETCH parsing, no STARTTLS, a hang on rejected XOAUTH2, corrupted ENVELOPE, no
LITERAL+) sit in the parts we would use most. Containing them would mean re-implementing the
response reader anyway, so the reader is ours and aioimaplib is not used.
"""
