"""netagg.controller"""
