"""Building blocks shared by the models: attention variants, feed-forward, memories."""
