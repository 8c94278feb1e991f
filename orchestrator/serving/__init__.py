"""The Ray Serve application: the Label Studio ingress in front of the model replicas."""
