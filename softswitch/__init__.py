"""netagg.softswitch"""
