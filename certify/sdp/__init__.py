"""The SDP relaxation (Raghunathan, Steinhardt and Liang 2018) with rigorous dual certificates.

* ``chain``: a network of affine ops and ReLUs lowered to a chain ``z_k = W_k x_{k-1} + b_k + e_k``,
  ``x_k = relu(z_k)``, with a proven bound ``|e_k| <= E_k`` on everything the float matrices leave out
  (the runtime's rounding, constants folded by the importer, the composition of affine ops in float64);
* ``problem``: the lifted quadratic program over ``P = [1 x^T; x X]`` (ReLU, input set, engine bounds),
  every constraint valid in exact arithmetic for the float coefficients it is stated with;
* ``certificate``: the bound reported: the value of a dual point checked in floating point with
  outward rounding (a rigorous lower bound on ``lambda_min`` times a proven bound on ``trace(P)``);
* ``cvx`` (cvxpy) and ``bm`` (Burer-Monteiro in torch): two ways of finding good multipliers. Neither
  is trusted: only ``certificate`` turns multipliers into a bound.
"""
