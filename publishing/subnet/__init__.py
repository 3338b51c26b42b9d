"""What is true of the subnet whatever this miner does: the facts publishing and the driver build on.

The chain (`chain`, and the bittensor SDK adapter `bittensor_chain`), the committed `ModelId`
(`model_id`) and the model hash (`model_hash`), competitions and their limits (`competitions`,
`model_checks`), the Hugging Face Hub (`hub`, `secrets`) and other miners' models
(`remote_model`), the validators' `iswin` (`iswin`), and every constant of the subnet's rules
(`constants`). Nothing here decides or publishes anything; `publishing` does, on top of this.
"""
