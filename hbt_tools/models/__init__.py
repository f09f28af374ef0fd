"""Model side: loading encoders of every supported family, pooling, settings, offline default."""
