"""Expression editing with a flow VAE (Yeh et al.): losses.py (pure functions), model.py (encoder,
flow decoder with the source's skip features, confidence mask, FlowVAE with its two training phases,
Algorithm 1's latent steps). Work in progress: the pair data, the training entry, the command and
the evaluation are still to come (issue "Expression editing with a flow VAE")."""
