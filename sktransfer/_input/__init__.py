"""The input pipeline: whatever users pass as images, turned into batches of tensors.

``images`` decodes any accepted input (paths, bytes, PIL images, arrays,
tensors) into upright RGB uint8 arrays, reduced where a JPEG allows it, and
names every sample it cannot read; ``transforms`` maps decoded images to the
network's input (the evaluation transform, test-time views, training
augmentation); ``loading`` decodes batches in threads ahead of the network.
Nothing here knows of models, stores or estimators.
"""
