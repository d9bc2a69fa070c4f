"""loadindex"""
