"""Training engines besides dlas's own DpnUNet (:mod:`dlas.training`).

:mod:`dlas.engines.nnunet`: nnU-Net v2.
"""
