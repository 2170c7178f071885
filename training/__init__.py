"""Training: rate–distortion training of base codecs (:mod:`icmh.training.rd`), task-adapter
training (:mod:`icmh.training.adapters`) against the task models' feature distortions
(:meth:`icmh.taskmodels.TaskModel.distortion`), resumable checkpoints and step logs
(:mod:`icmh.training.checkpoint`) and random crops of training images
(:mod:`icmh.training.data`). Uses the method and the task models; never the server or client."""
