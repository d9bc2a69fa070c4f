"""scalers"""
