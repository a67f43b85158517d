"""The launch floor: executor options, executors, job paths, the image code check and submission."""
