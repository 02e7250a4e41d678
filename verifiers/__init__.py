"""Built-in backends, in preference order: ``name -> "module:Class"``. One line per backend."""

BUILTIN = {
    "pgd": "verifiers.pgd:PGD",
    "ibp": "verifiers.ibp:IBP",
    "crown": "verifiers.crown:CROWN",
    "alpha-crown": "verifiers.alpha_crown:AlphaCROWN",
    "bab": "verifiers.bab:BaB",
    "milp": "verifiers.milp:MILP",
    "smt": "verifiers.smt:SMT",
    "sdp": "verifiers.sdp:SDP",
    "sdp-bm": "verifiers.sdp:SDPBM",
    "smoothing": "verifiers.smoothing:Smoothing",
    "lirpa": "verifiers.lirpa:Lirpa",
}
